"""How closely one numeric path follows another: mask DSC and pixel agreement, class-probability differences, and
the tolerance ``auto`` and the int8 export hold a path to against fp32."""

from __future__ import annotations

import torch

from fastmtl.output import MTLOutput

__all__ = ["TOLERANCE", "agreement", "cat_outputs", "describe", "within_tolerance"]

TOLERANCE = {"mask_dsc": 99.5, "prob_mean_abs": 0.005}  # against fp32 (auto: on images int8 did not calibrate on)


def agreement(reference: MTLOutput, other: MTLOutput, threshold: float = 0.5) -> dict[str, float]:
    """How closely ``other`` follows ``reference``: mask DSC (%, over foreground pixels of both), mask pixel
    agreement (%) and the mean / max absolute difference of class probabilities."""
    out: dict[str, float] = {}
    if reference.seg_logits is not None:
        ref, oth = reference.seg_logits.float(), other.seg_logits.float()
        if ref.shape[1] == 1:
            a, b = (torch.sigmoid(ref) > threshold).long(), (torch.sigmoid(oth) > threshold).long()
        else:  # class indices; background is 0
            a, b = ref.argmax(1), oth.argmax(1)
        inter, total = ((a == b) & (a > 0)).sum().item(), (a > 0).sum().item() + (b > 0).sum().item()
        out["mask_dsc"] = 100.0 if total == 0 else 200.0 * inter / total
        out["mask_agreement"] = 100.0 * (a == b).float().mean().item()
    if reference.cls_logits is not None:
        diff = (torch.sigmoid(reference.cls_logits.float()) - torch.sigmoid(other.cls_logits.float())).abs()
        out["prob_mean_abs"], out["prob_max_abs"] = diff.mean().item(), diff.max().item()
    return out


def cat_outputs(outputs: list[MTLOutput]) -> MTLOutput:
    """The outputs of several batches as one (fp32), so :func:`agreement` pools their pixels and images."""
    return MTLOutput(*(None if ts[0] is None else torch.cat([t.float() for t in ts]) for ts in zip(*outputs)))


def within_tolerance(measured: dict[str, float]) -> bool:
    return (
        measured.get("mask_dsc", 100.0) >= TOLERANCE["mask_dsc"]
        and measured.get("prob_mean_abs", 0.0) <= TOLERANCE["prob_mean_abs"]
    )


def describe(measured: dict[str, float]) -> str:
    parts = []
    if "mask_dsc" in measured:
        parts.append(f"mask DSC {measured['mask_dsc']:.2f}%, pixels {measured['mask_agreement']:.2f}% equal")
    if "prob_mean_abs" in measured:
        parts.append(f"|dp| mean {measured['prob_mean_abs']:.4f} max {measured['prob_max_abs']:.4f}")
    return ", ".join(parts) or "no outputs compared"
