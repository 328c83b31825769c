"""Evaluation targets of the paper protocol: further data folders (``--eval DIR[:SPLIT]``), opened before the
training so that a wrong folder fails early, and the evaluation of the selected model on a decoded split."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastmtl.checkpoint.rundir import RunDir
from fastmtl.checkpoint.store import load_model
from fastmtl.engine.distributed import DistInfo
from fastmtl.engine.train.config import TrainConfig
from fastmtl.engine.train.device_loader import DeviceSplit
from fastmtl.engine.train.device_step import evaluate_split, with_kernel_fallback
from fastmtl.engine.train.loop import StepContext
from fastmtl.runtime import amp_dtype

__all__ = ["HEADLINE", "EvalTarget", "evaluate", "open_eval", "parse_eval", "selected_model"]

# the headline metrics summary.json and eval-<name>.json entries carry
HEADLINE = ("dsc", "ji", "global_dice", "acc", "sen", "spe", "auc_mean", "auc_melanoma", "auc_seborrheic_keratosis",
            "loss", "n_seg_images", "n_cls_images")  # fmt: skip


@dataclass(frozen=True)
class EvalTarget:
    """A further data folder to evaluate the final model on: ``root`` and its ``split``, written as ``name``."""

    root: Path
    split: str
    name: str


def parse_eval(spec: str, taken: set[str] | None = None) -> EvalTarget:
    """``DIR:SPLIT`` (or ``DIR``, split "test") -> :class:`EvalTarget` with a file-safe unique name.

    Raises:
        FileNotFoundError: the folder does not exist.
    """
    root, sep, split = spec.rpartition(":")
    if not sep or not root or "/" in split:
        root, split = spec, "test"
    path = Path(root)
    if not path.exists():
        raise FileNotFoundError(f"--eval {spec!r}: data folder {path} not found")
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{path.name}-{split}").strip("_") or "eval"
    name, k = base, 2
    while taken is not None and name in taken:
        name, k = f"{base}-{k}", k + 1
    if taken is not None:
        taken.add(name)
    return EvalTarget(path, split, name)


def open_eval(config: TrainConfig, target: EvalTarget, limit: int = 0) -> Any:
    """The evaluation split's dataset (at most ``limit`` images), opened now so that a wrong folder or split fails
    before the training, not after it.

    Raises:
        FileNotFoundError / ValueError: naming the folder, split or file.
    """
    from fastmtl.data import build_dataset, subset

    cache = False if config.data.cache_dir == "off" else (config.data.cache_dir or None)
    try:
        ds = build_dataset("auto", target.root, target.split, img_size=config.model.img_size, train=False,
                           cache_dir=cache, normalize=config.data.normalize)  # fmt: skip
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"--eval {target.root}:{target.split}: {e}") from e
    return subset(ds, range(limit)) if limit and limit < len(ds) else ds


def selected_model(run_dir: RunDir, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The model to evaluate: ``best`` (selected on validation) when a validation ran, else ``last``."""
    path, which = run_dir.selected()
    model, _ = load_model(path)
    return model.to(device), which


def evaluate(model, split: DeviceSplit, config: TrainConfig, device: torch.device, meta: dict) -> dict[str, Any]:
    """The SPEC section 6 metrics (and the loss, with the run's class weights) of ``model`` on ``split``."""
    from fastmtl.losses import MTLLoss

    weights = meta.get("class_weights")
    loss_fn = MTLLoss(model.config.seg_classes, config.optim.alpha, None if weights is None else torch.tensor(weights))
    ctx = StepContext(model, model, None, None, loss_fn.to(device), DistInfo(device=device),
                      amp_dtype(config.run.amp, device), config.run.channels_last)  # fmt: skip
    if config.run.channels_last:
        model.to(memory_format=torch.channels_last)
    split = split.to(device)

    def run() -> dict[str, Any]:
        names = {"class_names": tuple(meta["class_names"]), "seg_class_names": tuple(meta["seg_class_names"])}
        side = config.model.img_size
        return evaluate_split(model, split, ctx=ctx, img_size=(side, side), normalize=config.data.normalize,
                              batch_size=config.eval_batch_size, seg_classes=int(meta["seg_classes"]),
                              **names)  # fmt: skip

    return with_kernel_fallback(model, device, run, print, "evaluation")
