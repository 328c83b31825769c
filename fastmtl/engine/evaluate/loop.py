"""The one evaluation loop: validation during training and ``fastmtl eval`` both run :func:`run_evaluation`.

:func:`run_evaluation` runs a model over a DataLoader of sample dicts (see :mod:`fastmtl.data.base`) and feeds
an :class:`EvalState`: a :class:`~fastmtl.metrics.SegmentationMeter` (images with a mask), a
:class:`~fastmtl.metrics.ClassificationMeter` (images with labels), one record per image and, given a loss
function, the summed loss. Under ``torch.distributed`` each rank evaluates its shard and :func:`sync_state`
gathers the states so every rank gets the single-process result (the sampler must not pad or repeat images).
:meth:`EvalState.metrics` turns a state into the flat metric dict that training logs and ``metrics.json`` hold.

The device-resident validation (:func:`fastmtl.engine.train.device_step.evaluate_split`) fills the same
:class:`EvalState` and ends through the same :func:`sync_state` and :meth:`EvalState.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from fastmtl.engine.distributed import DistInfo, all_gather_objects
from fastmtl.losses import MTLLoss
from fastmtl.metrics import ClassificationMeter, SegmentationMeter
from fastmtl.output import MTLOutput
from fastmtl.runtime import Amp, autocast, batch_to_device

__all__ = ["EvalState", "run_evaluation", "sync_state"]


@dataclass
class EvalState:
    """What an evaluation pass accumulates.

    Records are dicts: ``id``, ``dice`` (per-image Dice in percent pooled over the foreground classes; NaN
    without a mask or when truth and prediction are both empty), ``has_mask``, ``has_label``, ``probs``
    (list of K sigmoid probabilities or None) and ``label`` (list of K 0/1 or None). ``loss_sum`` is the loss
    summed over images (None when no loss was measured).
    """

    seg: SegmentationMeter | None
    cls: ClassificationMeter | None
    records: list[dict[str, Any]] = field(default_factory=list)
    n_images: int = 0
    loss_sum: float | None = None

    def merge(self, other: EvalState) -> EvalState:
        """Appends another state's images (same classes); returns self."""
        for name in ("seg", "cls"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if (mine is None) != (theirs is None):
                raise ValueError(f"cannot merge EvalStates: one has a {name} meter and the other not")
            if mine is not None:
                mine.merge(theirs)
        self.records.extend(other.records)
        self.n_images += other.n_images
        if other.loss_sum is not None:
            self.loss_sum = (self.loss_sum or 0.0) + other.loss_sum
        return self

    def to_state(self) -> dict[str, Any]:
        """Picklable state for ``torch.distributed.all_gather_object``."""
        return {
            "seg": None if self.seg is None else self.seg.to_state(),
            "cls": None if self.cls is None else self.cls.to_state(),
            "records": list(self.records),
            "n_images": self.n_images,
            "loss_sum": self.loss_sum,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EvalState:
        """Inverse of :meth:`to_state`."""
        seg = None if state["seg"] is None else SegmentationMeter.from_state(state["seg"])
        clf = None if state["cls"] is None else ClassificationMeter.from_state(state["cls"])
        return cls(seg, clf, list(state["records"]), state.get("n_images", 0), state.get("loss_sum"))

    def metrics(self) -> dict[str, Any]:
        """Flat metric dict: ``n_images``, ``loss`` when measured, segmentation keys when any image had a mask,
        classification keys when any had labels."""
        out: dict[str, Any] = {"n_images": self.n_images}
        if self.loss_sum is not None:
            out["loss"] = self.loss_sum / self.n_images if self.n_images else math.nan
        if self.seg is not None and self.seg.counts.shape[0] > 0:
            out.update(self.seg.compute())
        if self.cls is not None and self.cls.labels.shape[0] > 0:
            out.update(self.cls.compute())
        return out


def _pooled_dice(meter: SegmentationMeter) -> list[float]:
    """Per-image Dice in percent over all foreground classes pooled; NaN when truth and prediction are empty."""
    tp, fp, fn = meter.counts.sum(dim=2).double().unbind(dim=1)  # (M,) each
    den = 2 * tp + fp + fn
    return [100.0 * float(n) / float(d) if d > 0 else math.nan for n, d in zip(2 * tp, den, strict=True)]


def _update(state: EvalState, out: MTLOutput, batch: dict[str, Any], ids: list[str]) -> list[dict[str, Any]]:
    """Feeds one batch's outputs to the meters and returns its per-image records."""
    n = len(ids)
    device = batch["image"].device
    has_mask = batch.get("has_mask", torch.zeros(n, dtype=torch.bool, device=device)).bool()
    has_label = batch.get("has_label", torch.zeros(n, dtype=torch.bool, device=device)).bool()
    dice = [math.nan] * n
    if state.seg is not None and out.seg_logits is not None and bool(has_mask.any()):
        part = SegmentationMeter(state.seg.num_classes, state.seg.class_names)
        part.update(out.seg_logits.float(), batch["mask"], has_mask)
        state.seg.merge(part)
        for i, value in zip(has_mask.nonzero().flatten().tolist(), _pooled_dice(part), strict=True):
            dice[i] = value
    probs = None if out.cls_logits is None else torch.sigmoid(out.cls_logits.float()).cpu()
    if state.cls is not None and out.cls_logits is not None and bool(has_label.any()):
        state.cls.update(out.cls_logits.float()[has_label], batch["label"][has_label])
    labels = batch.get("label")
    labels = None if labels is None else labels.cpu()
    has_mask, has_label = has_mask.tolist(), has_label.tolist()
    return [
        {
            "id": ids[i],
            "dice": dice[i],
            "has_mask": has_mask[i],
            "has_label": has_label[i],
            "probs": None if probs is None else probs[i].tolist(),
            "label": labels[i].tolist() if labels is not None and has_label[i] else None,
        }
        for i in range(n)
    ]


def run_evaluation(
    model: nn.Module,
    loader: Iterable[dict[str, Any]],
    *,
    seg_classes: int,
    class_names: Sequence[str] | None,
    device: str | torch.device = "cpu",
    amp: Amp = "auto",
    seg_class_names: Sequence[str] | None = None,
    loss_fn: MTLLoss | None = None,
    channels_last: bool = False,
    max_steps: int = 0,
    progress: bool = False,
    desc: str = "evaluate",
) -> EvalState:
    """Runs ``model`` over ``loader`` in eval mode (its training mode is restored after) and accumulates.

    Args:
        model: returns :class:`~fastmtl.output.MTLOutput`.
        loader: batches of sample dicts (image, mask, has_mask, label, has_label, id).
        seg_classes: the model's segmentation channels.
        class_names: classification class names; None or empty skips classification.
        device: where the model lives.
        amp: mixed precision, see :mod:`fastmtl.runtime`.
        seg_class_names: foreground class names (default from ``seg_classes``).
        loss_fn: also sum this loss over the images (validation during training).
        channels_last: feed the model channels-last images.
        max_steps: stop after this many batches (0: all).
        progress: show a tqdm bar over batches.
        desc: the bar's label.
    """
    device = torch.device(device)
    state = EvalState(
        SegmentationMeter(seg_classes, seg_class_names),
        ClassificationMeter(class_names) if class_names else None,
        loss_sum=None if loss_fn is None else 0.0,
    )
    was_training = model.training
    model.eval()
    try:
        # no_grad, not inference_mode: a lazily created buffer must stay usable when training resumes
        with torch.no_grad():
            for i, batch in enumerate(tqdm(loader, desc=desc, disable=not progress, unit="batch", leave=False)):
                if max_steps and i >= max_steps:
                    break
                ids = list(batch["id"])
                batch = batch_to_device(batch, device, channels_last)
                with autocast(device, amp):
                    out = model(batch["image"])  # (B, C, H, W) in
                if loss_fn is not None:
                    terms = loss_fn(out, batch["mask"], batch["label"], batch["has_mask"], batch["has_label"])
                    state.loss_sum += float(terms["loss"]) * len(ids)
                state.n_images += len(ids)
                state.records.extend(_update(state, out, batch, ids))
    finally:
        model.train(was_training)
    return state


def sync_state(state: EvalState, world: DistInfo | None = None) -> EvalState:
    """Gathers every rank's state (rank order) when more than one process runs.

    Every rank must call it; each gets the merged state. ``world`` defaults to the initialised process group, if
    any; in a single process ``state`` comes back unchanged.
    """
    if world is None:
        if not (dist.is_available() and dist.is_initialized()):
            return state
        world = DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size())
    if not world.distributed:
        return state
    gathered = all_gather_objects(world, state.to_state())
    merged = EvalState.from_state(gathered[0])
    for other in gathered[1:]:
        merged.merge(EvalState.from_state(other))
    return merged
