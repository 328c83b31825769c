"""Evaluation of a checkpoint on a dataset split: the SPEC section 6 metrics, plots and worst-case overlays.

Two levels:

- :func:`run_evaluation` / :func:`evaluate_model` run a model over a DataLoader of sample dicts (see
  :mod:`fastmtl.data.base`) and feed a :class:`~fastmtl.metrics.SegmentationMeter` (images with a mask) and a
  :class:`~fastmtl.metrics.ClassificationMeter` (images with labels). The training loop calls these for
  validation; under ``torch.distributed`` each rank evaluates its shard and :func:`sync_state` gathers the
  meters so every rank gets the single-process result (the sampler must not pad or repeat images).
- :func:`evaluate` loads a checkpoint, evaluates one split at the model's ``img_size``, prints the table and
  writes ``metrics.json``, ``roc.png``, ``confusion.png`` and ``worst/<id>.png`` into ``out_dir``.

A split without masks still gets classification metrics, one without labels segmentation metrics.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from fastmtl.engine.checkpoint import load_model, model_config
from fastmtl.engine.overlay import draw_overlay, save_png
from fastmtl.engine.plots import plot_confusion, plot_roc
from fastmtl.files import atomic_write_json, safe_name
from fastmtl.metrics import ClassificationMeter, SegmentationMeter, format_table
from fastmtl.output import MTLOutput

__all__ = [
    "EvalState",
    "autocast_context",
    "evaluate",
    "evaluate_model",
    "run_evaluation",
    "seg_to_classes",
    "sync_state",
]

AmpSpec = torch.dtype | bool | None


def autocast_context(device: torch.device | str, amp: AmpSpec = None) -> AbstractContextManager:
    """Mixed precision for inference: None = bf16 on CUDA and off elsewhere, True = bf16, False = off."""
    device = torch.device(device)
    if amp is None:
        amp = device.type == "cuda"
    if amp is False:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp is True else amp)


def seg_to_classes(seg_logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(B, C, H, W) logits -> (B, H, W) uint8 class indices: sigmoid > threshold for C == 1, else argmax."""
    if seg_logits.shape[1] == 1:
        return (torch.sigmoid(seg_logits[:, 0].float()) > threshold).to(torch.uint8)
    return seg_logits.argmax(dim=1).to(torch.uint8)


@dataclass
class EvalState:
    """What an evaluation pass accumulates: the two meters and one record per image.

    Records are dicts: ``id``, ``dice`` (per-image Dice in percent pooled over the foreground classes; NaN
    without a mask or when truth and prediction are both empty), ``has_mask``, ``has_label``, ``probs``
    (list of K sigmoid probabilities or None) and ``label`` (list of K 0/1 or None).
    """

    seg: SegmentationMeter | None
    cls: ClassificationMeter | None
    records: list[dict[str, Any]] = field(default_factory=list)

    def merge(self, other: EvalState) -> EvalState:
        """Appends another state's images (same classes); returns self."""
        for name in ("seg", "cls"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if (mine is None) != (theirs is None):
                raise ValueError(f"cannot merge EvalStates: one has a {name} meter and the other not")
            if mine is not None:
                mine.merge(theirs)
        self.records.extend(other.records)
        return self

    def to_state(self) -> dict[str, Any]:
        """Picklable state for ``torch.distributed.all_gather_object``."""
        return {
            "seg": None if self.seg is None else self.seg.to_state(),
            "cls": None if self.cls is None else self.cls.to_state(),
            "records": list(self.records),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EvalState:
        """Inverse of :meth:`to_state`."""
        seg = None if state["seg"] is None else SegmentationMeter.from_state(state["seg"])
        clf = None if state["cls"] is None else ClassificationMeter.from_state(state["cls"])
        return cls(seg, clf, list(state["records"]))

    def metrics(self) -> dict[str, Any]:
        """Flat metric dict: segmentation keys when any image had a mask, classification keys when any had labels."""
        out: dict[str, Any] = {"n_images": len(self.records)}
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


def _update(state: EvalState, out: MTLOutput, batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Feeds one batch's outputs to the meters and returns its per-image records."""
    ids = list(batch["id"])
    n = len(ids)
    has_mask = batch.get("has_mask", torch.zeros(n, dtype=torch.bool)).bool()
    has_label = batch.get("has_label", torch.zeros(n, dtype=torch.bool)).bool()
    dice = [math.nan] * n
    if state.seg is not None and out.seg_logits is not None and bool(has_mask.any()):
        part = SegmentationMeter(state.seg.num_classes, state.seg.class_names)
        part.update(out.seg_logits, batch["mask"], has_mask)
        state.seg.merge(part)
        for i, value in zip(has_mask.nonzero().flatten().tolist(), _pooled_dice(part), strict=True):
            dice[i] = value
    probs = None if out.cls_logits is None else torch.sigmoid(out.cls_logits.float()).cpu()
    if state.cls is not None and out.cls_logits is not None and bool(has_label.any()):
        rows = has_label.to(out.cls_logits.device)
        state.cls.update(out.cls_logits[rows], batch["label"].to(out.cls_logits.device)[rows])
    labels = batch.get("label")
    return [
        {
            "id": ids[i],
            "dice": dice[i],
            "has_mask": bool(has_mask[i]),
            "has_label": bool(has_label[i]),
            "probs": None if probs is None else probs[i].tolist(),
            "label": labels[i].tolist() if labels is not None and bool(has_label[i]) else None,
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
    amp: AmpSpec = None,
    seg_class_names: Sequence[str] | None = None,
    progress: bool = False,
    desc: str = "evaluate",
) -> EvalState:
    """Runs ``model`` over ``loader`` in eval mode (training mode is restored after) and accumulates the meters.

    Args:
        model: returns :class:`~fastmtl.output.MTLOutput`.
        loader: batches of sample dicts (image, mask, has_mask, label, has_label, id).
        seg_classes: the model's segmentation channels.
        class_names: classification class names; None or empty skips classification.
        device: where the model lives.
        amp: see :func:`autocast_context`.
        seg_class_names: foreground class names (default from ``seg_classes``).
        progress: show a tqdm bar over batches.
        desc: the bar's label.
    """
    device = torch.device(device)
    state = EvalState(
        SegmentationMeter(seg_classes, seg_class_names),
        ClassificationMeter(class_names) if class_names else None,
    )
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc=desc, disable=not progress, unit="batch", leave=False):
                images = batch["image"].to(device, non_blocking=True)  # (B, C, H, W)
                with autocast_context(device, amp):
                    out = model(images)
                state.records.extend(_update(state, out, batch))
    finally:
        model.train(was_training)
    return state


def sync_state(state: EvalState) -> EvalState:
    """Gathers every rank's state (rank order) when torch.distributed runs with more than one process.

    Every rank must call it; each gets the merged state. Without an initialised process group it returns
    ``state`` unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return state
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state.to_state())
    merged = EvalState.from_state(gathered[0])
    for other in gathered[1:]:
        merged.merge(EvalState.from_state(other))
    return merged


def evaluate_model(
    model: nn.Module,
    loader: Iterable[dict[str, Any]],
    *,
    seg_classes: int,
    class_names: Sequence[str] | None,
    device: str | torch.device = "cpu",
    amp: AmpSpec = None,
    seg_class_names: Sequence[str] | None = None,
    sync: bool = False,
    progress: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Validation entry point for the training loop.

    Same arguments as :func:`run_evaluation`, plus ``sync``: gather all ranks' meters first (every rank must
    call). Use :func:`run_evaluation` + :func:`sync_state` to reduce the meters some other way.

    Returns:
        (flat metric dict as :meth:`EvalState.metrics`, per-image records as in :class:`EvalState`).
    """
    state = run_evaluation(
        model,
        loader,
        seg_classes=seg_classes,
        class_names=class_names,
        device=device,
        amp=amp,
        seg_class_names=seg_class_names,
        progress=progress,
    )
    if sync:
        state = sync_state(state)
    return state.metrics(), state.records


def _worst(records: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    scored = [r for r in records if r["has_mask"] and not math.isnan(r["dice"])]
    return sorted(scored, key=lambda r: (r["dice"], r["id"]))[: max(k, 0)]


def predict_sample(
    model: nn.Module, image: torch.Tensor, normalize: str, device
) -> tuple[np.ndarray, np.ndarray | None]:
    """One normalised (C, H, W) dataset image through ``model``: the uint8 (H, W, 3) picture and the predicted
    class map (H, W), or None for a model without a segmentation head."""
    from fastmtl.data.transforms import denormalize

    with torch.inference_mode(), autocast_context(device):
        out = model(image[None].to(device))
    picture = denormalize(image, normalize).expand(3, -1, -1).permute(1, 2, 0).numpy()
    pred = None if out.seg_logits is None else seg_to_classes(out.seg_logits)[0].cpu().numpy()
    return picture, pred


def _write_worst(model: nn.Module, dataset: Any, worst: list[dict[str, Any]], folder: Path, device) -> list[Path]:
    """Re-runs the worst images and saves [image | image + GT outline + prediction] panels."""
    index = {image_id: i for i, image_id in enumerate(dataset.ids)}
    normalize = getattr(dataset, "normalize", "imagenet")
    paths = []
    for record in worst:
        sample = dataset[index[record["id"]]]
        image, pred = predict_sample(model, sample["image"], normalize, device)
        if pred is None:
            break
        panel = np.concatenate([image, draw_overlay(image, pred, sample["mask"].numpy())], axis=1)
        paths.append(save_png(folder / f"{safe_name(record['id'])}.png", panel))
    return paths


def _check_compatible(config: Any, dataset: Any) -> tuple[str, ...] | None:
    """Class names to evaluate classification with (None: skip); raises on a model/dataset mismatch."""
    if dataset.has_masks.any() and config.seg_classes != dataset.seg_classes:
        raise ValueError(
            f"model {config.name} predicts {config.seg_classes} segmentation channel(s) but the dataset has "
            f"seg_classes={dataset.seg_classes}"
        )
    names = tuple(dataset.class_names)
    if not names or not dataset.has_labels.any() or config.cls_head == "none":
        return None
    if len(names) != config.cls_classes:
        raise ValueError(f"model {config.name} has {config.cls_classes} class logits but the dataset has {names}")
    return names


def _report_files(state: EvalState, out_dir: Path) -> dict[str, str]:
    files = {}
    if state.cls is not None and state.cls.labels.shape[0] > 0:
        names = state.cls.class_names
        files["roc"] = str(plot_roc(state.cls.probs.numpy(), state.cls.labels.numpy(), names, out_dir / "roc.png"))
        conf = state.cls.confusion().numpy()
        files["confusion"] = str(plot_confusion(conf, names, out_dir / "confusion.png"))
    return files


def evaluate(
    checkpoint: str | os.PathLike,
    data_root: str | os.PathLike | None,
    split: str,
    out_dir: str | os.PathLike,
    *,
    kind: str | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    worst_k: int = 8,
    dataset_opts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluates a checkpoint on one dataset split and writes the report into ``out_dir``.

    Args:
        checkpoint: ``<stem>.safetensors`` written by fastmtl.
        data_root: dataset folder (layout detected unless ``kind`` is given).
        split: split name understood by :func:`fastmtl.data.build_dataset`.
        out_dir: receives ``metrics.json``, ``roc.png``/``confusion.png`` (with labels) and ``worst/<id>.png``.
        kind: dataset kind; None detects it.
        batch_size: evaluation batch size.
        num_workers: DataLoader workers.
        device: "cpu", "cuda", ...
        worst_k: number of lowest-Dice images to draw.
        dataset_opts: extra ``build_dataset`` options (cache_dir, normalize, vendor, ...). ``normalize``
            defaults to the checkpoint meta's ``"normalize"``, else "imagenet".

    Returns:
        The ``metrics.json`` content (metrics with NaN as None, files, worst ids and Dice, run facts) plus
        ``"table"``, the printed text table.
    """
    from fastmtl.data import build_dataset

    device = torch.device(device)
    model, meta = load_model(checkpoint, device=device)
    config = model_config(model)
    opts = {"normalize": meta.get("normalize", "imagenet"), **(dataset_opts or {})}
    dataset = build_dataset(kind or "auto", data_root, split, img_size=config.img_size, train=False, **opts)
    class_names = _check_compatible(config, dataset)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    state = run_evaluation(
        model,
        loader,
        seg_classes=config.seg_classes,
        class_names=class_names,
        device=device,
        seg_class_names=getattr(dataset, "seg_class_names", None),
        progress=True,
    )
    metrics = state.metrics()
    table = format_table(metrics)
    print(table)
    out_dir = Path(out_dir)
    files = _report_files(state, out_dir)
    worst = _worst(state.records, worst_k)
    files["worst"] = [str(p) for p in _write_worst(model, dataset, worst, out_dir / "worst", device)]
    report = {
        "checkpoint": str(checkpoint),
        "model": config.name,
        "dataset": type(dataset).__name__,
        "data_root": None if data_root is None else str(data_root),
        "split": split,
        "img_size": config.img_size,
        "metrics": metrics,
        "worst": [{"id": r["id"], "dice": r["dice"]} for r in worst],
        "files": files,
    }
    atomic_write_json(out_dir / "metrics.json", report)
    return {**report, "table": table}
