"""One epoch of a run: its steps (the run's :class:`~fastmtl.engine.train.batches.Batches` into its
:class:`~fastmtl.engine.train.loop.Step`; the loop does not know which of each it has), the validation, the record
and checkpoints, and the budget schedule's re-plan."""

from __future__ import annotations

import time
from typing import Any

from tqdm.auto import tqdm

from fastmtl.engine.train.device_step import with_kernel_fallback
from fastmtl.engine.train.run import Run, after_step, cut_epoch, finish_epoch
from fastmtl.engine.train.schedule import poly_lr

__all__ = ["epoch"]


def epoch(run: Run) -> bool:
    """Trains, validates and records one epoch (or its rest after a resume); False when stopped early."""
    config, state = run.config, run.state
    started = time.perf_counter()
    completed, extra = _train_epoch(run)
    if completed:
        state.running["seconds"] = state.running.get("seconds", 0.0) + time.perf_counter() - started
        optim = config.optim
        lr = poly_lr(optim.lr, max(state.global_step - 1, 0), run.total_steps, optim.poly_power)  # its last step's
        last = state.epoch + 1 >= optim.epochs or run.plan_done()
        val, ended = None, time.monotonic()
        if last or (state.epoch + 1) % config.run.val_every_epochs == 0:
            val = _timed_validation(run, extra)
        finish_epoch(run, val, lr, extra)
        if val is not None and run.schedule is not None:
            _replan(run, ended, extra)
    return completed


def _train_epoch(run: Run) -> tuple[bool, dict[str, Any]]:
    """The steps of one epoch (or its rest): returns (completed, throughput facts for the log row). The losses are
    read when the step says so (every step for the classic one, every ``sync_every`` for the device step), before
    a checkpoint and at the end."""
    state, step, schedule = run.state, run.step, run.schedule
    batches = run.batches.epoch(state.epoch, state.step_in_epoch)
    run.ctx.model.train()
    step.begin_epoch()
    first, started = state.global_step, time.perf_counter()
    warm = min(10, max(run.steps // 4, 1))  # steps before the steady-state clock starts (compile, autotune)
    bar = tqdm(total=run.steps, initial=state.step_in_epoch, desc=f"epoch {state.epoch + 1}",
               disable=not (run.config.run.progress and run.ctx.world.is_main), leave=False)  # fmt: skip
    try:
        # zip asks range first, so no batch is loaded beyond the last step
        for _, batch in zip(range(run.steps - state.step_in_epoch), batches, strict=False):
            step.take(batch, state)
            state.step_in_epoch += 1
            state.global_step += 1
            bar.update(1)
            postfix = step.postfix()
            if postfix:
                bar.set_postfix(**postfix)
            if step.read_due(state.step_in_epoch, run.steps, warm):
                run.read_losses()
            if schedule is not None and schedule.needs_sync(state.global_step):
                run.read_losses()  # waits for the device: the clock mark is the device's time
                if schedule.observe(time.monotonic(), state.global_step) and run.ctx.world.is_main:
                    tqdm.write(schedule.describe(run.config.optim.epochs))
                step.total = run.total_steps
            if run.plan_done():
                break  # the budget's last step: this (shortened) epoch validates and the run ends
            if after_step(run):
                run.read_losses()
                facts = step.facts(first + warm, run.images_per_step)
                cut_epoch(run, first, facts, time.perf_counter() - started)
                return False, {}
    finally:
        bar.close()
    run.read_losses()
    return True, step.facts(first + warm, run.images_per_step)


def _timed_validation(run: Run, extra: dict[str, Any]) -> dict[str, Any]:
    """Validates, recording ``validation_s`` (and ``validation_warm_s`` for the run's first validation when asked)."""
    started = time.perf_counter()
    val = _validate(run)
    extra["validation_s"] = time.perf_counter() - started
    if run.warm_validation and not any("validation_s" in r for r in run.state.history):
        started = time.perf_counter()
        _validate(run)
        extra["validation_warm_s"] = time.perf_counter() - started
    return val


def _replan(run: Run, ended: float, extra: dict[str, Any]) -> None:
    """A budget schedule re-plans after a validated epoch with what its end cost (a warm validation, the
    checkpoint and the logs), measured from the epoch's last step to now."""
    now = time.monotonic()
    elapsed = now - ended
    cost = elapsed - extra["validation_s"] if "validation_warm_s" in extra else elapsed  # warm, not cold + warm
    if run.schedule is not None and not run.plan_done():
        run.schedule.validated(now, run.state.global_step, cost, elapsed)
        run.step.total = run.total_steps


def _validate(run: Run) -> dict[str, Any]:
    """Validation metrics; a Triton kernel failure (eval mode uses other kernels than training) falls back to the
    reference layers with a printed line instead of ending the run."""
    model, device = run.ctx.raw_model, run.ctx.world.device
    return with_kernel_fallback(model, device, lambda: run.batches.validate(run.ctx), tqdm.write, "validation")
