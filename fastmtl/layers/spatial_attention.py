"""Spatial attention gate used at the end of the DFE module."""

from __future__ import annotations

import torch
from torch import nn

from fastmtl.kernels.dfe.ref import spatial_attention_ref

__all__ = ["SpatialAttention", "spatial_attention_ref"]


class SpatialAttention(nn.Module):
    """Per-pixel gate from the channel mean and max through a k x k convolution (no bias) and a sigmoid."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"SpatialAttention kernel_size must be odd, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        return spatial_attention_ref(x, self.conv.weight)
