"""Residual efficient channel attention (ECA) gate."""

from __future__ import annotations

import torch
from torch import nn


class ECA(nn.Module):
    """ECA gate with a residual: ``out = x * sigmoid(conv1d(gap(x))) + x``.

    Global average pool over space, a 1-D convolution across channels (kernel ``k``, no bias), a sigmoid,
    then the per-channel gate scales ``x`` and the input is added back (SPEC.md §1).

    Args:
        kernel_size: width of the cross-channel 1-D convolution (odd).
    """

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"ECA kernel_size must be odd, got {kernel_size}")
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        y = x.mean(dim=(2, 3)).unsqueeze(1)  # (B, 1, C)
        gate = torch.sigmoid(self.conv(y)).transpose(1, 2).unsqueeze(-1)  # (B, C, 1, 1)
        return x * gate + x
