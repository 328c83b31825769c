"""Evaluation of a checkpoint on a dataset split: the SPEC section 6 metrics, plots and worst-case overlays.

:func:`evaluate` loads a checkpoint, evaluates one split at the model's ``img_size`` with the loop that also
validates during training (:func:`fastmtl.engine.evaluate.loop.run_evaluation`, re-exported here with
:class:`~fastmtl.engine.evaluate.loop.EvalState` and :func:`~fastmtl.engine.evaluate.loop.sync_state`), prints the table
and writes ``metrics.json``, ``roc.png``, ``confusion.png`` and ``worst/<id>.png`` into ``out_dir``, which it
holds locked meanwhile (:func:`fastmtl.files.exclusive_folder`, as train and predict do: a second job into the
same folder is refused with a message naming the holder).
:func:`evaluate_model` is the same loop for a model already in memory.

A split without masks still gets classification metrics, one without labels segmentation metrics.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from fastmtl.checkpoint.meta import warn_if_synthetic
from fastmtl.checkpoint.store import load_model, model_config
from fastmtl.engine.evaluate.loop import EvalState, run_evaluation, sync_state
from fastmtl.engine.evaluate.plots import plot_confusion, plot_roc
from fastmtl.engine.overlay import case_panel, save_png
from fastmtl.files import atomic_write_json, exclusive_folder, safe_name
from fastmtl.metrics import format_table
from fastmtl.output import seg_to_classes
from fastmtl.runtime import autocast

__all__ = ["EvalState", "evaluate", "evaluate_model", "run_evaluation", "sync_state"]


def evaluate_model(
    model: nn.Module, loader: Iterable[dict[str, Any]], *, sync: bool = False, **kwargs: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics and per-image records of ``model`` on ``loader``.

    Keyword arguments are those of :func:`run_evaluation` (``seg_classes`` and ``class_names`` required), plus
    ``sync``: gather all ranks' meters first (every rank must call). Use :func:`run_evaluation` +
    :func:`sync_state` to reduce the meters some other way.

    Returns:
        (flat metric dict as :meth:`EvalState.metrics`, per-image records as in :class:`EvalState`).
    """
    state = run_evaluation(model, loader, **kwargs)
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

    with torch.inference_mode(), autocast(device):
        out = model(image[None].to(device))
    picture = denormalize(image, normalize).expand(3, -1, -1).permute(1, 2, 0).numpy()
    pred = None if out.seg_logits is None else seg_to_classes(out.seg_logits)[0].cpu().numpy()
    return picture, pred


def _write_worst(model: nn.Module, dataset: Any, worst: list[dict[str, Any]], folder: Path, device) -> list[Path]:
    """Re-runs the worst images and saves one readable panel each: the id and Dice on top, [image | prediction
    filled + ground truth outlined] at >= 256 px per side, and a colour legend (:func:`case_panel`)."""
    index = {image_id: i for i, image_id in enumerate(dataset.ids)}
    normalize = getattr(dataset, "normalize", "imagenet")
    names = tuple(getattr(dataset, "seg_class_names", ()) or ("lesion",))
    paths, used = [], set()
    for rank, record in enumerate(worst, 1):
        name, n = safe_name(record["id"]), 1
        while name.casefold() in used:  # ids that differ only in characters safe_name replaces: one panel each
            n += 1
            name = f"{safe_name(record['id'])}_{n}"
        used.add(name.casefold())
        sample = dataset[index[record["id"]]]
        image, pred = predict_sample(model, sample["image"], normalize, device)
        if pred is None:
            break
        title = f"#{rank} worst: {record['id']}   Dice {record['dice']:.1f}%"
        panel = case_panel(image, pred, sample["mask"].numpy(), title, names)
        paths.append(save_png(folder / f"{name}.png", panel, atomic=True))
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

    Raises:
        FolderBusyError: another fastmtl job holds ``out_dir`` (the message names it).
    """
    with exclusive_folder(out_dir, "eval"):
        return _evaluate(checkpoint, data_root, split, Path(out_dir), kind, batch_size, num_workers, device, worst_k,
                         dataset_opts)  # fmt: skip


def _evaluate(checkpoint, data_root, split, out_dir: Path, kind, batch_size, num_workers, device, worst_k,
              dataset_opts) -> dict[str, Any]:  # fmt: skip
    from fastmtl.data import build_dataset
    from fastmtl.data.preflight import describe, screen

    device = torch.device(device)
    model, meta = load_model(checkpoint, device=device)
    warn_if_synthetic(meta, checkpoint)
    config = model_config(model)
    opts = {"normalize": meta.get("normalize", "imagenet"), **(dataset_opts or {})}
    dataset = build_dataset(kind or "auto", data_root, split, img_size=config.img_size, train=False, **opts)
    bad = screen(dataset)  # unreadable files and mask size mismatches, from the headers: seconds
    if bad:
        raise ValueError(f"{len(bad)} bad case(s) in the {split} split of {data_root}: {describe(bad)}; "
                         f"`fastmtl check-data --data-root {data_root}` lists every problem")  # fmt: skip
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
