"""One optimizer step, one training epoch and one validation pass: plain functions over a :class:`StepContext`."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from fastmtl.engine.distributed import DistInfo
from fastmtl.engine.evaluate.loop import run_evaluation, sync_state
from fastmtl.engine.train.loaders import set_epoch
from fastmtl.engine.train.schedule import poly_lr, set_lr
from fastmtl.engine.train.state import RunState
from fastmtl.losses import MTLLoss
from fastmtl.runtime import autocast, batch_to_device

__all__ = ["NonFiniteLossError", "StepContext", "run_epoch", "train_step", "validate"]


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


def _to_device(batch: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return batch_to_device(batch, ctx.world.device, ctx.channels_last)


def _loss_terms(ctx: StepContext, output, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return ctx.loss_fn(output, batch["mask"], batch["label"], batch["has_mask"], batch["has_label"])


def train_step(ctx: StepContext, batch: dict[str, Any], lr: float, where: str) -> dict[str, float]:
    """Forward, loss, backward and optimizer step on one batch.

    Args:
        ctx: the run's model, optimizer and settings.
        batch: a collated sample dict.
        lr: learning rate of this iteration.
        where: "epoch E step S (global step G)", used in the error message.

    Returns:
        The loss terms as floats, averaged over ranks.

    Raises:
        NonFiniteLossError: the loss (on any rank) is NaN or infinite; raised before any weight changes.
    """
    set_lr(ctx.optimizer, lr)
    batch = _to_device(batch, ctx)
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


def run_epoch(
    ctx: StepContext,
    state: RunState,
    loader: DataLoader,
    *,
    base_lr: float,
    steps: int,
    total_steps: int,
    poly_power: float,
    after_step: Callable[[RunState], bool],
    progress: bool = True,
) -> bool:
    """Trains from ``state.step_in_epoch`` to ``steps`` steps of ``state.epoch``.

    ``after_step(state)`` runs after every step (checkpointing); returning True stops the run early.

    Returns:
        True when the epoch completed, False when ``after_step`` stopped it.
    """
    set_epoch(loader, state.epoch, state.step_in_epoch)
    ctx.model.train()
    bar = tqdm(
        total=steps, initial=state.step_in_epoch, desc=f"epoch {state.epoch + 1}", disable=not progress, leave=False
    )
    start, images = time.perf_counter(), 0
    try:
        # zip asks range first, so no batch is loaded beyond the last step
        for _, batch in zip(range(steps - state.step_in_epoch), loader, strict=False):
            where = f"epoch {state.epoch + 1} step {state.step_in_epoch + 1} (global step {state.global_step + 1})"
            lr = poly_lr(base_lr, state.global_step, total_steps, poly_power)
            terms = train_step(ctx, batch, lr, where)
            n = int(batch["image"].shape[0]) * ctx.world.world_size
            state.add_step(terms, n)
            state.step_in_epoch += 1
            state.global_step += 1
            images += n
            bar.update(1)
            bar.set_postfix(loss=f"{terms['loss']:.4f}", img_s=f"{images / (time.perf_counter() - start):.1f}")
            if after_step(state):
                return False
    finally:
        bar.close()
    return True


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
