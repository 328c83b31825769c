"""A training run's parts (:class:`Run`) and what happens between steps and after epochs.

After every step: the periodic mid-epoch ``last`` checkpoint, the simulated kill (``stop_after_steps``) and the time
limit (``time_limit_min`` / a deadline; every rank takes rank 0's decision). After every epoch: the log row, ``best``
when the selection metric (validation JI, AUC for classification-only models) improved, ``last`` and the logs.
Checkpoints carry the dataset's class names (``class_names``, ``seg_class_names``) for predict and export.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from fastmtl.checkpoint.rundir import RunDir
from fastmtl.checkpoint.store import save_checkpoint
from fastmtl.engine.distributed import all_gather_objects
from fastmtl.engine.train.batches import Batches
from fastmtl.engine.train.config import TrainConfig
from fastmtl.engine.train.loaders import RunData
from fastmtl.engine.train.loop import Step, StepContext
from fastmtl.engine.train.records import write_logs
from fastmtl.engine.train.schedule import BudgetSchedule
from fastmtl.engine.train.state import RunState, capture_rng

__all__ = ["Run", "after_step", "finish_epoch", "run_summary", "save_last"]


@dataclass
class Run:
    """What the epoch loop and the checkpoint writers share (a bundle of parts, not a trainer)."""

    config: TrainConfig
    dir: RunDir
    data: RunData
    ctx: StepContext
    state: RunState
    batches: Batches  # where the batches come from (DataLoader or device-resident)
    step: Step  # the optimizer step (classic or device step)
    started: float = field(default_factory=time.monotonic)  # when this process started the run (time limit)
    deadline: float | None = None  # time.monotonic() at which to stop as with time_limit_min
    schedule: BudgetSchedule | None = None  # the budget-aware schedule length (train(..., budget_schedule=True))
    warm_validation: bool = False  # time the first validation a second time, warm
    on_epoch: Callable[[Run], None] | None = None  # called after each epoch's record is written
    partial: dict[str, Any] = field(default_factory=dict)  # an epoch the time limit cut: its steps and rate

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch."""
        return self.batches.steps

    @property
    def images_per_step(self) -> int:
        return self.config.optim.batch_size * self.ctx.world.world_size

    def read_losses(self) -> None:
        """Brings the step's losses not yet read into ``state.running`` (a host sync for the device step)."""
        state = self.state
        where = f"epoch {state.epoch + 1} step {state.step_in_epoch} (global step {state.global_step})"
        self.step.read(state, self.images_per_step, where)

    @property
    def total_steps(self) -> int:
        """The poly schedule's length: the planned steps of a budget schedule, else the configured epochs'."""
        if self.schedule is not None and self.schedule.total is not None:
            return self.schedule.total
        return self.config.optim.epochs * self.steps

    def plan_done(self) -> bool:
        """True once a budget schedule's planned steps are done."""
        return self.schedule is not None and self.schedule.done(self.state.global_step)


def _meta(run: Run, metrics: dict[str, Any]) -> dict[str, Any]:
    weights = run.ctx.loss_fn.class_weights
    return {
        "epoch": run.state.epoch,
        "global_step": run.state.global_step,
        "metrics": metrics,
        "class_names": list(run.data.class_names),
        "seg_classes": run.data.seg_classes,
        "seg_class_names": list(run.data.seg_class_names),
        "img_size": run.config.model.img_size,
        "normalize": run.config.data.normalize,
        "data_kind": run.data.kind,
        "val_source": run.data.val_source,
        "class_weights": None if weights is None else weights.tolist(),
        "train_config": run.config.to_dict(),
    }


def save_last(run: Run) -> None:
    """Saves ``last`` with optimizer and RNG state. Collective: every rank must call it (RNG states are gathered)."""
    ctx, state = run.ctx, run.state
    run.read_losses()
    rngs = all_gather_objects(ctx.world, capture_rng())
    if not ctx.world.is_main:
        return
    state.scaler = ctx.scaler.state_dict() if ctx.scaler.is_enabled() else {}
    meta = _meta(run, state.history[-1] if state.history else {})
    train_state = {"state": state.to_json(), "rng": rngs, "train_config": run.config.to_dict()}
    save_checkpoint(run.dir.last, ctx.raw_model, meta=meta, optimizer=ctx.optimizer, train_state=train_state)


def finish_epoch(run: Run, val: dict[str, Any] | None, lr: float, extra: dict[str, Any] | None = None) -> None:
    """Records the epoch, saves ``best`` if the selection metric improved (``val`` None: not validated this epoch),
    then ``last`` (every ``checkpoint_every_epochs`` epochs and after the last one) and the logs."""
    state, config = run.state, run.config
    key = "ji" if val is not None and "ji" in val else "auc_mean"
    value = float(val.get(key, math.nan)) if val is not None else math.nan
    previous = -math.inf if state.best_value is None or math.isnan(state.best_value) else state.best_value
    improved = val is not None and (state.best_epoch is None or value > previous)
    row = {"epoch": state.epoch + 1, "global_step": state.global_step, "lr": lr, **state.epoch_means(), **(extra or {})}
    if val is not None:
        row.update({f"val_{k}": v for k, v in val.items()})
        row["selection_metric"] = f"val_{key}"
    row["time_s"] = state.running.get("seconds", 0.0)
    state.history.append(row)
    state.epoch, state.step_in_epoch, state.running = state.epoch + 1, 0, {}
    if improved:
        state.best_value, state.best_epoch = value, state.epoch
        if run.ctx.world.is_main:
            save_checkpoint(run.dir.best, run.ctx.raw_model, meta=_meta(run, row))
    every = config.run.checkpoint_every_epochs
    if state.epoch >= config.optim.epochs or run.plan_done() or (every and state.epoch % every == 0):
        save_last(run)
    if run.ctx.world.is_main:
        write_logs(state.history, run.dir)
        if config.run.progress:
            _print_epoch(run, row, key, improved)
        if run.on_epoch is not None:
            run.on_epoch(run)


def _print_epoch(run: Run, row: dict[str, Any], key: str, improved: bool) -> None:
    val = ""
    if "val_loss" in row:
        value = row.get(f"val_{key}", math.nan)
        val = f"val loss {row['val_loss']:.4f}, val {key} {value:.2f}{' (best)' if improved else ''}, "
    tqdm.write(
        f"epoch {row['epoch']}/{run.config.optim.epochs}: train loss {row.get('train_loss', math.nan):.4f}, "
        f"{val}{row['images_per_s']:.1f} images/s"
    )


def after_step(run: Run) -> bool:
    """Periodic mid-epoch checkpoint; True once ``stop_after_steps`` is reached (a simulated kill)."""
    state, every, stop = run.state, run.config.run.checkpoint_every_steps, run.config.run.stop_after_steps
    if every and state.global_step % every == 0 and state.step_in_epoch < run.steps:
        save_last(run)
    if stop and state.global_step >= stop:
        return True
    if state.step_in_epoch < run.steps and _time_is_up(run):  # an epoch's last step validates first
        save_last(run)
        if run.ctx.world.is_main:
            limit = f"of {run.config.run.time_limit_min:g} min " if run.config.run.time_limit_min else ""
            tqdm.write(
                f"time limit {limit}reached at epoch {state.epoch + 1} step "
                f"{state.step_in_epoch}/{run.steps} (global step {state.global_step}); saved {run.dir.last}"
                "; run again with --resume to continue"
            )
        return True
    return False


def _time_is_up(run: Run) -> bool:
    """True once this process has trained ``time_limit_min`` or passed the deadline; every rank takes rank 0's
    decision."""
    limit, now = run.config.run.time_limit_min, time.monotonic()
    if not limit and run.deadline is None:
        return False
    up = bool(limit) and now - run.started >= 60.0 * limit
    up = up or (run.deadline is not None and now >= run.deadline)
    if run.ctx.world.distributed:
        flag = torch.tensor([float(up)], device=run.ctx.world.device)
        torch.distributed.broadcast(flag, src=0)
        up = bool(flag.item())
    return up


def run_summary(run_dir: RunDir, state: RunState, stopped: bool) -> dict[str, Any]:
    last = state.history[-1] if state.history else {}
    return {
        "out_dir": str(run_dir.path),
        "best_checkpoint": str(run_dir.best_weights),
        "last_checkpoint": str(run_dir.last_weights),
        "selection_metric": last.get("selection_metric"),
        "best_value": state.best_value,
        "best_epoch": state.best_epoch,
        "epochs_completed": state.epoch,
        "global_step": state.global_step,
        "stopped_early": stopped,
        "metrics": {k[4:]: v for k, v in last.items() if k.startswith("val_")},
        "history": state.history,
    }


def cut_epoch(run: Run, first_step: int, facts: dict[str, Any], seconds: float) -> None:
    """Keeps what an epoch cut by the time limit measured (its steps and steady rate), for the run's summary."""
    run.partial = {"epoch": run.state.epoch + 1, "steps": run.state.global_step - first_step, "time_s": seconds,
                   **facts}  # fmt: skip
