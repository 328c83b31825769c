"""One optimizer step (the :class:`Step` protocol and the classic :class:`EagerStep`) and one validation pass over a
:class:`StepContext`."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from fastmtl.engine.distributed import DistInfo
from fastmtl.engine.evaluate.loop import run_evaluation, sync_state
from fastmtl.engine.train.schedule import poly_lr, set_lr
from fastmtl.engine.train.state import RunState
from fastmtl.losses import MTLLoss
from fastmtl.runtime import autocast

__all__ = ["EagerStep", "NonFiniteLossError", "Step", "StepContext", "train_step", "validate"]


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite."""


@dataclass
class StepContext:
    """What a step needs. ``model`` is what runs forward in training (maybe DDP- or compile-wrapped);
    ``raw_model`` is the plain module (validation, checkpoints)."""

    model: nn.Module
    raw_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: MTLLoss
    world: DistInfo
    dtype: torch.dtype | None = None
    channels_last: bool = False
    grad_clip: float = 0.0

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.world.device, self.dtype or torch.float32)


def _loss_terms(ctx: StepContext, output, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return ctx.loss_fn(output, batch["mask"], batch["label"], batch["has_mask"], batch["has_label"])


def train_step(ctx: StepContext, batch: dict[str, Any], lr: float, where: str) -> dict[str, float]:
    """Forward, loss, backward and optimizer step on one batch.

    Args:
        ctx: the run's model, optimizer and settings.
        batch: a collated sample dict on the device (:func:`fastmtl.runtime.batch_to_device`).
        lr: learning rate of this iteration.
        where: "epoch E step S (global step G)", used in the error message.

    Returns:
        The loss terms as floats, averaged over ranks.

    Raises:
        NonFiniteLossError: the loss (on any rank) is NaN or infinite; raised before any weight changes.
    """
    set_lr(ctx.optimizer, lr)
    with ctx.autocast():
        output = ctx.model(batch["image"])
    terms = _loss_terms(ctx, output, batch)
    values = torch.stack([t.detach().float() for t in terms.values()])  # (T,)
    if ctx.world.distributed:  # every rank must see a NaN on any rank, or the others hang in backward
        dist.all_reduce(values)
        values /= ctx.world.world_size
    floats = dict(zip(terms, values.tolist(), strict=True))
    if not all(math.isfinite(v) for v in floats.values()):
        detail = ", ".join(f"{k}={v:.6g}" for k, v in floats.items())
        raise NonFiniteLossError(
            f"non-finite training loss at {where}: {detail} (lr={lr:.3g}); lower the learning rate, enable "
            "grad_clip or amp='off', or check the data"
        )
    ctx.optimizer.zero_grad(set_to_none=True)
    ctx.scaler.scale(terms["loss"]).backward()
    if ctx.grad_clip > 0:
        ctx.scaler.unscale_(ctx.optimizer)
        torch.nn.utils.clip_grad_norm_(ctx.raw_model.parameters(), ctx.grad_clip)
    ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    return floats


class Step(Protocol):
    """One optimizer step as the epoch loop sees it; :class:`EagerStep` or
    :class:`~fastmtl.engine.train.device_step.DeviceStep`, chosen once when the run is built."""

    total: int  # the poly schedule's length in steps (a budget schedule changes it)

    def begin_epoch(self) -> None:
        """Called before an epoch's (or its rest's) first step."""
        ...

    def take(self, batch: dict[str, Any], state: RunState) -> None:
        """One optimizer step on a batch on the device, at ``state.global_step``."""
        ...

    def read(self, state: RunState, images_per_step: int, where: str) -> None:
        """Brings the losses of the steps since the last read into ``state.running`` (a host sync)."""
        ...

    def read_due(self, step_in_epoch: int, steps: int, warm: int) -> bool:
        """Whether the loop reads the losses after this step of the epoch."""
        ...

    def postfix(self) -> dict[str, str]:
        """What the progress bar shows after a step."""
        ...

    def facts(self, from_step: int, images_per_step: int) -> dict[str, Any]:
        """Throughput facts of the epoch for its log row (``steady_images_per_s``), measured from ``from_step``."""
        ...

    def describe(self) -> str:
        """Which step ran, for the run's summary."""
        ...


class EagerStep:
    """The classic step: :func:`train_step` with the poly learning rate computed on the host, every step's loss
    read and checked there (each step waits for the device).

    Args:
        ctx: the run's model (maybe ``torch.compile``-wrapped), optimizer and settings.
        base_lr / total_steps / power: the poly schedule.
        compile_mode: the ``torch.compile`` mode ``ctx.model`` was wrapped with, or None (for the summary).
    """

    def __init__(self, ctx: StepContext, *, base_lr: float, total_steps: int, power: float,
                 compile_mode: str | None = None) -> None:  # fmt: skip
        self.ctx, self.base_lr, self.total, self.power = ctx, base_lr, total_steps, power
        self.compile_mode = compile_mode
        self.loss, self.images, self.started = math.nan, 0, time.perf_counter()

    def begin_epoch(self) -> None:
        self.images, self.started = 0, time.perf_counter()

    def take(self, batch: dict[str, Any], state: RunState) -> None:
        where = f"epoch {state.epoch + 1} step {state.step_in_epoch + 1} (global step {state.global_step + 1})"
        lr = poly_lr(self.base_lr, state.global_step, self.total, self.power)
        terms = train_step(self.ctx, batch, lr, where)
        n = int(batch["image"].shape[0]) * self.ctx.world.world_size
        state.add_step(terms, n)
        self.loss, self.images = terms["loss"], self.images + n

    def read(self, state: RunState, images_per_step: int, where: str) -> None:
        """Nothing to read: :meth:`take` read the step's losses."""

    def read_due(self, step_in_epoch: int, steps: int, warm: int) -> bool:
        return False

    def postfix(self) -> dict[str, str]:
        rate = self.images / max(time.perf_counter() - self.started, 1e-9)
        return {"loss": f"{self.loss:.4f}", "img_s": f"{rate:.1f}"}

    def facts(self, from_step: int, images_per_step: int) -> dict[str, Any]:
        return {}

    def describe(self) -> str:
        return "classic step: " + (f"torch.compile(mode={self.compile_mode!r})" if self.compile_mode else "eager")


def validate(
    ctx: StepContext,
    loader: DataLoader,
    class_names: tuple[str, ...],
    seg_classes: int,
    max_steps: int = 0,
    seg_class_names: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Validation loss and metrics, reduced over ranks: :func:`fastmtl.engine.evaluate.loop.run_evaluation` (the loop
    ``fastmtl eval`` runs) with the run's loss, precision and memory format.

    Runs the plain model (not the DDP wrapper: ranks may see different numbers of batches).

    Returns:
        Flat dict as :meth:`~fastmtl.engine.evaluate.loop.EvalState.metrics`: ``loss``, ``n_images`` and the meters'
        metrics (``ji``, ``dsc``, ``auc_mean``, ``acc`` ...).
    """
    state = run_evaluation(
        ctx.raw_model, loader, seg_classes=seg_classes, class_names=class_names, device=ctx.world.device,
        amp=ctx.dtype or torch.float32, seg_class_names=seg_class_names, loss_fn=ctx.loss_fn,
        channels_last=ctx.channels_last, max_steps=max_steps,
    )  # fmt: skip
    return sync_state(state, ctx.world).metrics()
