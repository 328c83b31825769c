"""Losses of ResFormer-MTL (SPEC section 4): total = L_seg + alpha * L_cls.

Segmentation, binary (ISIC, one sigmoid channel): soft Dice on sigmoid probabilities. Multi-class (RETOUCH,
softmax over C channels): soft Dice per class against the one-hot target, averaged over all C classes
(background included), plus a per-class binary focal loss on the clamped softmax probabilities.
Classification: per-class weighted binary cross-entropy with logits, averaged over classes and samples, i.e.
``nn.MultiLabelSoftMarginLoss(weight=w)``.

Dice smoothing follows the authors' code (nguyenpbui/ResFormer@ce6948b, ``src/losses.py``): the sums run over the
whole batch (all images and pixels pooled per class), not per image, with ``smooth = 1e-5`` added to numerator
and denominator. Batch pooling keeps the loss defined and stable on images with an empty mask; per-image Dice
would make an empty mask with a few false-positive pixels cost a full 1.0.

All losses compute in fp32 whatever the input dtype. Samples may be excluded from the segmentation loss with a
per-sample ``sample_weight`` (0/1), which is how ``MTLLoss`` handles batches where only some images carry a mask;
the weighting keeps the graph (and gradient path) intact even when no sample has a mask, and avoids
data-dependent indexing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastmtl.output import MTLOutput

__all__ = [
    "MTLLoss",
    "binary_dice_loss",
    "class_weights_from_labels",
    "focal_loss",
    "multiclass_dice_loss",
    "weighted_multilabel_loss",
]

DICE_SMOOTH = 1e-5  # the authors' value; batch-pooled sums make it negligible except on all-empty batches
FOCAL_CLAMP = 1e-3


def _spatial_target(logits: Tensor, target: Tensor, name: str = "target") -> Tensor:
    """Return target as (B, H, W), accepting (B, H, W) or (B, 1, H, W); raise on any other shape."""
    if logits.ndim != 4:
        raise ValueError(f"seg logits must be (B, C, H, W), got shape {tuple(logits.shape)}")
    b, _, h, w = logits.shape
    if target.ndim == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if tuple(target.shape) != (b, h, w):
        raise ValueError(
            f"{name} shape {tuple(target.shape)} does not match seg logits {tuple(logits.shape)}; "
            f"expected ({b}, {h}, {w}) or ({b}, 1, {h}, {w})"
        )
    return target


def _sample_weight(sample_weight: Tensor | None, batch: int, ref: Tensor) -> Tensor:
    """Return a (B, 1, 1, 1) fp32 weight on ref's device; ones when sample_weight is None."""
    if sample_weight is None:
        return torch.ones(batch, 1, 1, 1, device=ref.device)
    if tuple(sample_weight.shape) != (batch,):
        raise ValueError(f"sample_weight/has_mask must have shape ({batch},), got {tuple(sample_weight.shape)}")
    return sample_weight.to(device=ref.device, dtype=torch.float32).view(batch, 1, 1, 1)


def _soft_dice_per_class(probs: Tensor, onehot: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Batch-pooled soft Dice loss per channel: (B, C, H, W) x2 and (B, 1, 1, 1) weight -> (C,)."""
    dims = (0, 2, 3)
    tp = (weight * probs * onehot).sum(dims)  # (C,)
    denom = (weight * probs).sum(dims) + (weight * onehot).sum(dims)  # (C,) = 2tp + fp + fn
    return 1.0 - (2.0 * tp + eps) / (denom + eps)


def binary_dice_loss(
    logits: Tensor, target: Tensor, eps: float = DICE_SMOOTH, sample_weight: Tensor | None = None
) -> Tensor:
    """Soft Dice loss on sigmoid probabilities, pooled over the whole batch.

    Args:
        logits: (B, 1, H, W) segmentation logits.
        target: (B, H, W) or (B, 1, H, W) mask in {0, 1} (any dtype).
        eps: smoothing added to numerator and denominator (authors: 1e-5).
        sample_weight: optional (B,) weights (0/1 or bool); a 0 drops that image from the sums.

    Returns:
        Scalar fp32 tensor, ``1 - (2 sum(p t) + eps) / (sum(p) + sum(t) + eps)``, in [0, 1].
    """
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise ValueError(f"binary_dice_loss expects logits of shape (B, 1, H, W), got {tuple(logits.shape)}")
    target = _spatial_target(logits, target)
    probs = torch.sigmoid(logits.float())  # (B, 1, H, W)
    weight = _sample_weight(sample_weight, logits.shape[0], logits)
    return _soft_dice_per_class(probs, target.unsqueeze(1).float(), weight, eps)[0]


def _one_hot(target: Tensor, num_classes: int) -> Tensor:
    """(B, H, W) int class ids -> (B, C, H, W) fp32 one-hot; ids outside [0, C) give an all-zero pixel."""
    classes = torch.arange(num_classes, device=target.device).view(1, -1, 1, 1)
    return (target.long().unsqueeze(1) == classes).float()


def multiclass_dice_loss(
    logits: Tensor, target: Tensor, eps: float = DICE_SMOOTH, sample_weight: Tensor | None = None
) -> Tensor:
    """Soft Dice loss on softmax probabilities against the one-hot target, averaged over all C classes.

    Args:
        logits: (B, C, H, W) segmentation logits, C >= 2 (channel 0 is background and is included in the mean).
        target: (B, H, W) or (B, 1, H, W) integer class ids in [0, C).
        eps: smoothing added to numerator and denominator of each class's batch-pooled Dice.
        sample_weight: optional (B,) weights; a 0 drops that image from the sums.

    Returns:
        Scalar fp32 tensor in [0, 1].
    """
    if logits.ndim != 4 or logits.shape[1] < 2:
        raise ValueError(f"multiclass_dice_loss expects logits (B, C>=2, H, W), got {tuple(logits.shape)}")
    target = _spatial_target(logits, target)
    probs = torch.softmax(logits.float(), dim=1)  # (B, C, H, W)
    weight = _sample_weight(sample_weight, logits.shape[0], logits)
    return _soft_dice_per_class(probs, _one_hot(target, logits.shape[1]), weight, eps).mean()


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0, sample_weight: Tensor | None = None) -> Tensor:
    """Per-class binary focal loss on clamped softmax probabilities against the one-hot target.

    ``-(t (1-p)^gamma log p + (1-t) p^gamma log(1-p))`` with p clamped to [1e-3, 1 - 1e-3], averaged over
    pixels, images and classes (the authors average each class over its pixels, then over classes: the same).

    Args:
        logits: (B, C, H, W) segmentation logits, C >= 2.
        target: (B, H, W) or (B, 1, H, W) integer class ids in [0, C).
        gamma: focusing exponent.
        sample_weight: optional (B,) weights; the mean runs over the weighted images only.

    Returns:
        Scalar fp32 tensor, >= 0; 0 when every sample weight is 0.
    """
    if logits.ndim != 4 or logits.shape[1] < 2:
        raise ValueError(f"focal_loss expects logits (B, C>=2, H, W), got {tuple(logits.shape)}")
    target = _spatial_target(logits, target)
    probs = torch.softmax(logits.float(), dim=1).clamp(FOCAL_CLAMP, 1.0 - FOCAL_CLAMP)  # (B, C, H, W)
    onehot = _one_hot(target, logits.shape[1])  # (B, C, H, W)
    per_pixel = -(
        onehot * (1.0 - probs).pow(gamma) * probs.log() + (1.0 - onehot) * probs.pow(gamma) * (1.0 - probs).log()
    )
    weight = _sample_weight(sample_weight, logits.shape[0], logits)
    # Mean over the pixels of the weighted images; clamp keeps an all-zero weight at 0 instead of 0/0.
    count = weight.sum() * per_pixel[0].numel()
    return (weight * per_pixel).sum() / count.clamp_min(1.0)


def weighted_multilabel_loss(
    cls_logits: Tensor, labels: Tensor, class_weights: Tensor | None = None, has_label: Tensor | None = None
) -> Tensor:
    """Per-class weighted BCE with logits, averaged: equals ``nn.MultiLabelSoftMarginLoss(weight=class_weights)``.

    Args:
        cls_logits: (B, K) multi-label logits.
        labels: (B, K) targets in {0, 1} (any dtype).
        class_weights: optional (K,) per-class weights.
        has_label: optional (B,) bool; False drops that image (the mean runs over labelled images only; 0 with
            the graph intact when none is labelled).

    Returns:
        Scalar fp32 tensor.
    """
    if cls_logits.ndim != 2:
        raise ValueError(f"cls_logits must be (B, K), got shape {tuple(cls_logits.shape)}")
    if labels.shape != cls_logits.shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match cls_logits {tuple(cls_logits.shape)}")
    bce = F.binary_cross_entropy_with_logits(cls_logits.float(), labels.float(), reduction="none")  # (B, K)
    if class_weights is not None:
        if tuple(class_weights.shape) != (cls_logits.shape[1],):
            raise ValueError(
                f"class_weights shape {tuple(class_weights.shape)} does not match {cls_logits.shape[1]} classes"
            )
        bce = bce * class_weights.to(device=bce.device, dtype=bce.dtype)
    if has_label is None:
        return bce.mean()
    weight = _sample_weight(has_label, bce.shape[0], bce).view(-1, 1)
    return (bce * weight).sum() / (weight.sum() * bce.shape[1]).clamp_min(1.0)


def class_weights_from_labels(labels: Tensor | Sequence[Sequence[float]]) -> Tensor:
    """Inverse class frequency ``N / (K * n_c)`` from a training split's multi-label targets.

    Args:
        labels: (N, K) targets in {0, 1}; N cases, K classes.

    Returns:
        (K,) float32 weights. ISIC 2017 train (374 MEL, 254 SK, 1372 NEV of 2000) gives 1.78 / 2.62 / 0.49.

    Raises:
        ValueError: if labels are not 2-D, empty, or some class has no positive case.
    """
    labels = torch.as_tensor(labels)
    if labels.ndim != 2 or labels.shape[0] == 0:
        raise ValueError(f"labels must be a non-empty (N, K) array, got shape {tuple(labels.shape)}")
    n, k = labels.shape
    positives = (labels > 0.5).sum(dim=0)  # (K,)
    missing = [i for i in range(k) if positives[i] == 0]
    if missing:
        raise ValueError(f"class index {missing} has no positive case among {n} labels; cannot weight it")
    return (n / (k * positives.double())).float()


class MTLLoss(nn.Module):
    """Total ResFormer-MTL loss ``L_seg + alpha * L_cls`` returned as a dict of scalar tensors.

    Keys: ``"loss"`` (the total to backpropagate), ``"seg"``, ``"cls"``, and for ``seg_classes > 1`` also
    ``"dice"`` and ``"focal"`` (``seg = dice + focal``). Single-task models are supported: when
    ``output.seg_logits`` is None the total is the classification loss alone (no alpha, since alpha only
    balances two tasks) and ``"seg"`` is 0; when ``output.cls_logits`` is None the total is the segmentation
    loss and ``"cls"`` is 0.

    Args:
        seg_classes: segmentation channels: 1 for a sigmoid mask (Dice), >= 2 for softmax (Dice + focal).
        alpha: weight of the classification loss (paper: 0.25).
        class_weights: optional (K,) per-class weights of the classification loss, stored as a buffer.
        focal_gamma: focusing exponent of the focal loss (multi-class only).
        dice_eps: Dice smoothing (authors: 1e-5, batch-pooled).
    """

    def __init__(
        self,
        seg_classes: int = 1,
        alpha: float = 0.25,
        class_weights: Tensor | Sequence[float] | None = None,
        focal_gamma: float = 2.0,
        dice_eps: float = DICE_SMOOTH,
    ) -> None:
        super().__init__()
        if seg_classes < 1:
            raise ValueError(f"seg_classes must be >= 1, got {seg_classes}")
        self.seg_classes = seg_classes
        self.alpha = alpha
        self.focal_gamma = focal_gamma
        self.dice_eps = dice_eps
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if weights is not None and weights.ndim != 1:
            raise ValueError(f"class_weights must be 1-D (K,), got shape {tuple(weights.shape)}")
        self.class_weights: Tensor | None
        self.register_buffer("class_weights", weights)

    def seg_loss(self, seg_logits: Tensor, mask: Tensor, has_mask: Tensor | None = None) -> dict[str, Tensor]:
        """Segmentation terms: {"seg"} (binary) or {"seg", "dice", "focal"} (multi-class)."""
        if seg_logits.ndim != 4 or seg_logits.shape[1] != self.seg_classes:
            raise ValueError(
                f"seg_logits shape {tuple(seg_logits.shape)} does not match seg_classes={self.seg_classes}; "
                "expected (B, seg_classes, H, W)"
            )
        mask = _spatial_target(seg_logits, mask, name="mask")
        if has_mask is not None:
            _sample_weight(has_mask, seg_logits.shape[0], seg_logits)  # validates the (B,) shape
            # Images without a mask may carry any placeholder (e.g. 255); zero it so it is a valid class id.
            keep = has_mask.to(device=mask.device, dtype=torch.bool).view(-1, 1, 1)
            mask = torch.where(keep, mask, torch.zeros_like(mask))
        if self.seg_classes == 1:
            return {"seg": binary_dice_loss(seg_logits, mask, self.dice_eps, has_mask)}
        dice = multiclass_dice_loss(seg_logits, mask, self.dice_eps, has_mask)
        focal = focal_loss(seg_logits, mask, self.focal_gamma, has_mask)
        return {"seg": dice + focal, "dice": dice, "focal": focal}

    def forward(
        self,
        output: MTLOutput,
        mask: Tensor | None = None,
        labels: Tensor | None = None,
        has_mask: Tensor | None = None,
        has_label: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Compute the loss terms.

        Args:
            output: the model's ``MTLOutput``; seg_logits (B, seg_classes, H, W), cls_logits (B, K).
            mask: (B, H, W) or (B, 1, H, W) target: {0, 1} for binary, class ids for multi-class. Required
                when seg_logits is given.
            labels: (B, K) multi-label targets in {0, 1}. Required when cls_logits is given.
            has_mask: optional (B,) bool; False drops that image from the segmentation loss. When no image of
                the batch has a mask the segmentation terms are 0 but stay attached to the graph.
            has_label: optional (B,) bool; False drops that image from the classification loss.

        Returns:
            Dict of scalar fp32 tensors, see the class docstring.
        """
        seg_logits, cls_logits = output.seg_logits, output.cls_logits
        if seg_logits is None and cls_logits is None:
            raise ValueError("MTLOutput has neither seg_logits nor cls_logits; nothing to compute a loss on")
        if seg_logits is not None and mask is None:
            raise ValueError("the model returned seg_logits but mask is None")
        if cls_logits is not None and labels is None:
            raise ValueError("the model returned cls_logits but labels is None")
        ref = seg_logits if seg_logits is not None else cls_logits
        zero = ref.new_zeros((), dtype=torch.float32)
        terms: dict[str, Tensor] = {"seg": zero, "cls": zero}
        if seg_logits is not None:
            terms.update(self.seg_loss(seg_logits, mask, has_mask))
        if cls_logits is not None:
            terms["cls"] = weighted_multilabel_loss(cls_logits, labels, self.class_weights, has_label)
        if seg_logits is None:
            total = terms["cls"]
        elif cls_logits is None:
            total = terms["seg"]
        else:
            total = terms["seg"] + self.alpha * terms["cls"]
        return {"loss": total, **terms}

    def extra_repr(self) -> str:
        return f"seg_classes={self.seg_classes}, alpha={self.alpha}, focal_gamma={self.focal_gamma}"
