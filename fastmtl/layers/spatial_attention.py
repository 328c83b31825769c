"""Spatial attention gate used at the end of the DFE module."""

from __future__ import annotations

import torch
from torch import nn


def spatial_attention_ref(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Reference spatial attention: ``x * sigmoid(conv7x7([mean_c(x), max_c(x)]))``.

    Args:
        x: (B, C, H, W) features.
        weight: (1, 2, k, k) convolution weight; input channel 0 reads the channel mean, 1 the channel max.
    """
    pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)
    gate = torch.sigmoid(nn.functional.conv2d(pooled, weight, padding=weight.shape[-1] // 2))  # (B, 1, H, W)
    return x * gate


class SpatialAttention(nn.Module):
    """Per-pixel gate from the channel mean and max through a k x k convolution (no bias) and a sigmoid."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"SpatialAttention kernel_size must be odd, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        return spatial_attention_ref(x, self.conv.weight)
