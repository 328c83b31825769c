"""The training room: ``job.train(config)``; the config (``config``: four sections; ``config_file``: TOML, presets,
``--set``); the run built once (``build``) with its batches (``batches``: DataLoader or device-resident) and its
step (``loop.EagerStep`` or ``device_step.DeviceStep``); the epoch (``epoch``), what happens between steps and
after epochs (``run``), schedule, state and records."""
