"""The one output type every fastmtl model returns, and how its segmentation logits read as class maps."""

from __future__ import annotations

from typing import NamedTuple

import torch


class MTLOutput(NamedTuple):
    """Logits of both tasks. Activations live in losses, metrics and predict, never in the model.

    Attributes:
        seg_logits: (B, n_seg, H, W) segmentation logits at input resolution (sigmoid when n_seg == 1,
            softmax over channels otherwise); None for classification-only models.
        cls_logits: (B, n_cls) multi-label classification logits (one sigmoid each); None for
            segmentation-only models.
    """

    seg_logits: torch.Tensor | None
    cls_logits: torch.Tensor | None


def seg_to_classes(seg_logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(B, C, H, W) logits -> (B, H, W) uint8 class indices: sigmoid > threshold for C == 1, else argmax."""
    if seg_logits.shape[1] == 1:
        return (torch.sigmoid(seg_logits[:, 0].float()) > threshold).to(torch.uint8)
    return seg_logits.argmax(dim=1).to(torch.uint8)
