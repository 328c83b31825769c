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

from fastmtl.engine.distributed import DistInfo, all_gather_objects
from fastmtl.engine.loaders import set_epoch
from fastmtl.engine.schedule import poly_lr, set_lr
from fastmtl.engine.state import RunState
from fastmtl.losses import MTLLoss
from fastmtl.metrics import ClassificationMeter, SegmentationMeter

__all__ = ["NonFiniteLossError", "StepContext", "amp_dtype", "run_epoch", "train_step", "validate"]

_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite."""


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for the ``amp`` setting: "auto" is bf16 on CUDA and off on CPU."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return _AMP[amp]


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
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.world.device.type, dtype=self.dtype)


def _to_device(batch: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    device = ctx.world.device
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if ctx.channels_last:
        out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
    return out


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


def _update_meters(
    meters: dict[str, Any], output, batch: dict[str, torch.Tensor], class_names, seg_classes, seg_names
) -> None:
    if output.seg_logits is not None and bool(batch["has_mask"].any()):
        meters.setdefault("seg", SegmentationMeter(seg_classes, seg_names))
        meters["seg"].update(output.seg_logits.float(), batch["mask"], batch["has_mask"])
    if output.cls_logits is not None:
        keep = batch["has_label"].bool()
        if bool(keep.any()):
            meters.setdefault("cls", ClassificationMeter(class_names))
            meters["cls"].update(output.cls_logits.float()[keep], batch["label"][keep])


@torch.no_grad()
def validate(
    ctx: StepContext,
    loader: DataLoader,
    class_names: tuple[str, ...],
    seg_classes: int,
    max_steps: int = 0,
    seg_class_names: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Validation loss and metrics (``SegmentationMeter`` / ``ClassificationMeter``), reduced over ranks.

    Runs the plain model (not the DDP wrapper: ranks may see different numbers of batches).

    Returns:
        Flat dict: ``loss`` plus the meters' metrics (``ji``, ``dsc``, ``auc_mean``, ``acc`` ...).
    """
    model = ctx.raw_model
    model.eval()
    meters: dict[str, Any] = {}
    loss_sum, count = 0.0, 0
    try:
        for i, batch in enumerate(loader):
            if max_steps and i >= max_steps:
                break
            batch = _to_device(batch, ctx)
            with ctx.autocast():
                output = model(batch["image"])
            loss_sum += float(_loss_terms(ctx, output, batch)["loss"]) * batch["image"].shape[0]
            count += int(batch["image"].shape[0])
            _update_meters(meters, output, batch, class_names, seg_classes, seg_class_names)
    finally:
        model.train()
    states = all_gather_objects(ctx.world, ({k: m.to_state() for k, m in meters.items()}, loss_sum, count))
    return _reduce(states)


def _reduce(states: list[tuple[dict[str, Any], float, int]]) -> dict[str, Any]:
    """Merges the per-rank meter states into one metric dict."""
    merged: dict[str, Any] = {}
    kinds = {"seg": SegmentationMeter, "cls": ClassificationMeter}
    for meter_states, _, _ in states:
        for key, meter_state in meter_states.items():
            meter = kinds[key].from_state(meter_state)
            merged[key] = merged[key].merge(meter) if key in merged else meter
    count = sum(c for _, _, c in states)
    out: dict[str, Any] = {"loss": sum(s for _, s, _ in states) / count if count else math.nan}
    for meter in merged.values():
        out.update(meter.compute())
    return out
