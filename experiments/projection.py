"""Throughput and projection helpers of the paper protocol: the FLOPs of one training image, the time of the
paper's 150 epochs at a measured rate, and the per-epoch costs read from a training log.

The projection of the full protocol's time comes from the measured steady-state images/s (or, when the budget cut
the only epoch, that epoch's rate), the warm validation time (the first validation is timed twice) and the
model's forward + backward FLOPs (:func:`train_flops_per_image`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fastmtl.engine.train.config import TrainConfig

__all__ = ["PAPER_EPOCHS", "project_minutes", "throughput", "train_flops_per_image"]

PAPER_EPOCHS = 150


def train_flops_per_image(config: TrainConfig, seg_classes: int = 1, cls_classes: int = 3) -> float:
    """FLOPs of one image's forward and backward pass at ``config.model.img_size`` (convolutions and matrix products,
    one multiply-add = 2 FLOPs, as SPEC section 7), counted on the meta device: nothing is computed."""
    from torch.utils.flop_counter import FlopCounterMode

    from fastmtl.registry import create_model, model_options

    opts = {k: v for k, v in config.model.options.items() if k != "kernels"}
    accepted = model_options(config.model.name)
    wanted = {"seg_classes": seg_classes, "cls_classes": cls_classes}
    opts.update({k: v for k, v in wanted.items() if k in accepted and k not in opts and v > 0})
    if "img_size" in accepted:
        opts["img_size"] = config.model.img_size  # the model section's, the one image size
    if "kernels" in accepted:
        opts["kernels"] = "reference"  # the Triton ops carry no FLOP formula; the arithmetic is the same
    with torch.device("meta"):
        model = create_model(config.model.name, **opts)
    image = torch.empty(1, model.config.in_chans, config.model.img_size, config.model.img_size, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = model(image)
        total = sum(t.float().sum() for t in (out.seg_logits, out.cls_logits) if t is not None)
        total.backward()
    return float(counter.get_total_flops())


def project_minutes(
    images_per_epoch: int, steady_images_per_s: float, epochs: int = PAPER_EPOCHS, warmup_s: float = 0.0,
    val_s: float = 0.0, val_every: int = 1,
) -> float:  # fmt: skip
    """Minutes for ``epochs`` epochs at the measured steady rate, plus the one-off warm-up and the validations."""
    if not steady_images_per_s > 0:
        return math.nan
    validations = math.ceil(epochs / max(val_every, 1))
    return (epochs * images_per_epoch / steady_images_per_s + warmup_s + validations * val_s) / 60.0


def throughput(history: list[dict[str, Any]], batch: int, full_images: int, val_every: int,
               partial: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Per-epoch costs from the training log and the projection of the paper's 150 epochs from them.

    A validation is costed by its warm time (``validation_warm_s``: the first validation timed again, after the
    autotuning and cuDNN's algorithm search of the first). When no epoch completed, the steady rate of the epoch
    the budget cut (``partial``: its steps, seconds and ``steady_images_per_s``) stands in for it."""
    if not history:
        rate = (partial or {}).get("steady_images_per_s")
        if not rate:
            return {"epoch_s": None, "train_images_per_s": None, "projected_150_epochs_min": None}
        full = (full_images // batch) * batch or partial["steps"] * batch
        projected = project_minutes(full, rate, PAPER_EPOCHS)
        return {"epoch_s": None, "partial_epoch_steps": partial["steps"], "partial_epoch_s": partial["time_s"],
                "images_per_full_epoch": full, "train_images_per_s": rate, "rate_from": "the epoch the budget cut",
                "epochs_per_s": rate / full, "projected_150_epochs_min": projected}  # fmt: skip
    first, last = history[0], history[-1]
    steps = [b["global_step"] - a["global_step"] for a, b in zip([{"global_step": 0}, *history], history)]
    images = steps[-1] * batch
    steady = last.get("steady_images_per_s") or last.get("images_per_s") or math.nan
    full = (full_images // batch) * batch or images  # a full epoch of the configured data (before any limit)
    warmup = max(first["time_s"] - steps[0] * batch / steady, 0.0) if steady > 0 else 0.0
    vals = [r.get("validation_warm_s", r["validation_s"]) for r in history if "validation_s" in r]
    val_s = sum(vals) / len(vals) if vals else 0.0
    cold = next((r["validation_s"] for r in history if "validation_s" in r), None)
    projected = project_minutes(full, steady, PAPER_EPOCHS, warmup, val_s, val_every)
    return {
        "epoch_s": last["time_s"],
        "first_epoch_s": first["time_s"],
        "images_per_epoch": images,
        "images_per_full_epoch": full,
        "train_images_per_s": steady,
        "train_images_per_s_incl_warmup": sum(steps) * batch / max(sum(r["time_s"] for r in history), 1e-9),
        "warmup_s": warmup,
        "val_s": val_s,
        "val_cold_s": cold,
        "rate_from": "completed epochs",
        "val_share": val_s / val_every / (full / steady) if steady > 0 and full else None,
        "epochs_per_s": steady / full if full else None,
        "projected_150_epochs_min": projected,
    }
