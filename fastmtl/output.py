"""The one output type every fastmtl model returns."""

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
