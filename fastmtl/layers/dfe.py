"""Dilated feature enhancement (DFE) on the skip connections and the bottleneck (SPEC.md §2).

:class:`DFE` is the four-branch module of the authors' code (1x1 and dilated 3x3 branches, 3x3 merge over the
concatenation, 1x1 shortcut, ReLU, spatial attention). :class:`DFE3` is the three-branch module the paper's text
describes. Both keep the channel count. On the Triton backend :class:`DFE` runs the fused kernels of
``fastmtl.kernels.dfe``; state_dicts are the same on every backend.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from fastmtl.backend import default_backend, use_triton
from fastmtl.layers.spatial_attention import SpatialAttention


class ConvBN(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d; ``padding = dilation * (k // 2)`` keeps the size."""

    def __init__(self, cin: int, cout: int, kernel_size: int, dilation: int = 1) -> None:
        pad = dilation * (kernel_size // 2)
        conv = nn.Conv2d(cin, cout, kernel_size, padding=pad, dilation=dilation, bias=False)
        super().__init__(OrderedDict(conv=conv, bn=nn.BatchNorm2d(cout)))


def _check_dilations(dilations: tuple[int, ...]) -> tuple[int, ...]:
    dilations = tuple(int(d) for d in dilations)
    if not dilations or any(d < 1 for d in dilations):
        raise ValueError(f"dilations must be a non-empty sequence of positive ints, got {dilations}")
    return dilations


class DFE(nn.Module):
    """Four-branch DFE: ``SA(ReLU(BN(conv3x3(cat(branches))) + BN(conv1x1(x))))``.

    Each branch is conv (no bias) -> BN -> ReLU with ``channels`` outputs: a 1x1 conv and one 3x3 conv per
    dilation rate (padding = dilation).

    Args:
        channels: input and output channels.
        dilations: rates of the dilated 3x3 branches (default 6, 12, 18).
        kernels: ``"reference"``, ``"triton"`` or ``"auto"``.
    """

    def __init__(self, channels: int, dilations: tuple[int, ...] = (6, 12, 18), kernels: str | None = None) -> None:
        super().__init__()
        self.dilations = _check_dilations(dilations)
        self.kernels = kernels or default_backend()
        self.branches = nn.ModuleList(
            [ConvBN(channels, channels, 1)] + [ConvBN(channels, channels, 3, dilation=d) for d in self.dilations]
        )
        self.merge = ConvBN(len(self.branches) * channels, channels, 3)
        self.shortcut = ConvBN(channels, channels, 1)
        self.attention = SpatialAttention(7)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        cat = torch.cat([torch.relu(branch(x)) for branch in self.branches], dim=1)  # (B, nb*C, H, W)
        return self.attention(torch.relu(self.merge(cat) + self.shortcut(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_triton(self.kernels, x.is_cuda):
            from fastmtl.kernels.dfe import dfe_forward

            return dfe_forward(self, x)
        return self.forward_reference(x)


class DFE3(nn.Module):
    """Three-branch DFE of the paper's text: ``SA(ReLU(sum_d BN(conv1x1(BN(conv3x3_d(x))))))``.

    Args:
        channels: input and output channels.
        dilations: one branch per rate (default 6, 12, 18).
        kernels: ``"reference"``, ``"triton"`` or ``"auto"``. On the Triton path the branches, linear up to the sum,
            fold at inference into one set of dilated taps run by one kernel (see ``fastmtl.kernels.dfe``).
    """

    def __init__(self, channels: int, dilations: tuple[int, ...] = (6, 12, 18), kernels: str | None = None) -> None:
        super().__init__()
        self.dilations = _check_dilations(dilations)
        self.kernels = kernels or default_backend()
        self.branches = nn.ModuleList(
            nn.Sequential(
                OrderedDict(dilated=ConvBN(channels, channels, 3, dilation=d), point=ConvBN(channels, channels, 1))
            )
            for d in self.dilations
        )
        self.attention = SpatialAttention(7)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        total = self.branches[0](x)
        for branch in self.branches[1:]:
            total = total + branch(x)
        return self.attention(torch.relu(total))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_triton(self.kernels, x.is_cuda):
            from fastmtl.kernels.dfe import dfe3_forward

            return dfe3_forward(self, x)
        return self.forward_reference(x)
