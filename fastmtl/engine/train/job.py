"""``train(config, data_root, out_dir)``: the paper's training protocol (SPEC section 5) as plain functions.

AdamW with a per-iteration poly schedule, class-weighted MTL loss, optional mixed precision / channels-last /
``torch.compile`` / gradient clipping, validation on a split carved from training (or the dataset's own), and
checkpoint selection by validation JI (AUC for classification-only models).

The run is built once (:mod:`fastmtl.engine.train.build`): its batches come from a DataLoader or from splits
decoded onto the device (``data.input_pipeline``, :mod:`fastmtl.engine.train.batches`), its step is the classic one
or the device step that never waits for the device (``run.device_step``, :mod:`fastmtl.engine.train.device_step`);
the epoch loop (:mod:`fastmtl.engine.train.epoch`) talks to both through their protocols. What happens between
steps and after epochs (checkpoints, logs, the time limit) is in :mod:`fastmtl.engine.train.run`; validation runs
the evaluation loop of :mod:`fastmtl.engine.evaluate.loop`.

Outputs in ``out_dir``, laid out by :class:`fastmtl.checkpoint.rundir.RunDir`: the resolved config, ``last``
(every ``run.checkpoint_every_epochs`` epochs and every ``run.checkpoint_every_steps`` steps, with optimizer and
RNG state for ``resume=True``), ``best``, the per-epoch logs and the learning curves. Under torchrun only rank 0
writes.

Exact resume: the checkpoint holds the weights, the optimizer, the step counters and every RNG state (per
rank); the data order and augmentation are functions of (seed, epoch, index) (see :mod:`fastmtl.engine.train.loaders`),
so a run killed at any point and resumed from ``last`` ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastmtl.checkpoint.rundir import RunDir
from fastmtl.engine.distributed import DistInfo, barrier, cleanup, init_distributed
from fastmtl.engine.train.build import build_run, determinism
from fastmtl.engine.train.config import TrainConfig
from fastmtl.engine.train.epoch import epoch
from fastmtl.engine.train.records import plot_curves, write_logs
from fastmtl.engine.train.run import Run, run_summary
from fastmtl.engine.train.schedule import BudgetSchedule

__all__ = ["TrainConfig", "train"]


def train(
    config: TrainConfig,
    data_root: str | Path | None = None,
    out_dir: str | Path = "runs/train",
    resume: bool = False,
    *,
    deadline: float | None = None,
    other_data: bool = False,
    budget_schedule: bool = False,
    warm_validation: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Trains a model; see the module docstring for the protocol and the files written.

    Args:
        config: the run's settings.
        data_root: dataset folder (None: synthetic data, or ``config.data.kind`` must not need one).
        out_dir: output folder (created); must not hold a run unless ``resume``.
        resume: continue the run saved in ``out_dir/last`` exactly where it stopped; refused when the data differs
            from the run's ``split.json`` (:mod:`fastmtl.engine.train.folder`) unless ``other_data``.
        deadline: a ``time.monotonic()`` value: stop there as ``time_limit_min`` does (saving ``last``); for a
            caller whose budget includes the data decoding and what follows the training.
        budget_schedule: with ``deadline`` (device step only): fit the poly schedule to the deadline
            (:class:`~fastmtl.engine.train.schedule.BudgetSchedule`): the run ends, validated and saved, after the
            planned steps, with its learning rate decayed to the end.
        warm_validation: time the first validation a second time (``validation_warm_s`` in its log row): the
            first one includes autotuning and cuDNN's algorithm search.
        on_epoch: called after each epoch's log row and checkpoints with the summary so far (main process).

    Returns:
        Summary: ``out_dir``, ``best_checkpoint``, ``last_checkpoint``, ``selection_metric``, ``best_value``,
        ``best_epoch``, ``epochs_completed``, ``global_step``, ``stopped_early``, ``metrics`` (last validation),
        ``history``, ``step`` (which training step ran, compiled or eager), ``partial_epoch`` (steps and rate of
        an epoch the time limit cut, else {}) and ``schedule`` (the budget schedule's plan, else None).

    Raises:
        ValueError: invalid config or data (including :class:`~fastmtl.engine.train.loop.NonFiniteLossError`).
        FileNotFoundError: missing data.
        CheckpointError: ``resume`` without a checkpoint.
    """
    world = init_distributed(config.run.device)
    run_dir = RunDir(out_dir)
    try:
        with run_dir.lock("train", enabled=world.is_main), determinism(config, world.device):
            if world.is_main:
                run_dir.clean_stale()
            hooks = {"budget_schedule": budget_schedule, "warm_validation": warm_validation, "on_epoch": on_epoch}
            return _train(config, data_root, run_dir, resume, world, deadline, other_data, hooks)
    finally:
        cleanup(world)


def _train(config: TrainConfig, data_root, run_dir: RunDir, resume: bool, world: DistInfo, deadline,
           other_data: bool, hooks: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    run = build_run(config, data_root, run_dir, resume, world, other_data)
    run.deadline = deadline
    run.warm_validation = hooks["warm_validation"]
    if hooks["budget_schedule"]:
        if deadline is None or not config.run.device_step:
            raise ValueError("the budget schedule needs a time budget and the device step (device_step = true)")
        run.schedule = BudgetSchedule.fitting(deadline, run.steps, config, run.batches.val_images)
    if hooks["on_epoch"] is not None and world.is_main:
        run.on_epoch = lambda r: hooks["on_epoch"](_summary(r, False))
    stopped = False
    while run.state.epoch < config.optim.epochs and not stopped and not run.plan_done():
        stopped = not epoch(run)
    barrier(world)
    if world.is_main and run.state.history:
        write_logs(run.state.history, run_dir)  # again: a kill right after the last checkpoint left them behind
        plot_curves(run.state.history, run_dir.curves)
    return _summary(run, stopped)


def _summary(run: Run, stopped: bool) -> dict[str, Any]:
    summary = run_summary(run.dir, run.state, stopped)
    summary["step"] = run.step.describe()
    summary["partial_epoch"] = run.partial
    summary["schedule"] = run.schedule
    return summary
