"""The evaluation room: ``job.evaluate``, the evaluation loop shared with training's validation, and the plots."""
