"""Multi-scale patch embedding (image -> stage-1 map) and patch merging (stage i -> stage i+1)."""

from __future__ import annotations

import torch
from torch import nn

from fastmtl.layers.eca import ECA


def _layer_norm_channels(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channel axis of a (B, C, H, W) map."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MultiScalePatchEmbed(nn.Module):
    """Four stride-2 convolutions with kernels 2/4/8/16 over the image, concatenated, residual ECA, LayerNorm.

    Each kernel k uses padding k/2 - 1, so every branch lands on the same H/2 x W/2 grid; the branches give
    32/16/8/8 channels (64 in all at the default width).

    Args:
        in_chans: image channels.
        embed_dim: output channels; split 1/2, 1/4, 1/8, 1/8 over the four kernels.
    """

    kernel_sizes = (2, 4, 8, 16)

    def __init__(self, in_chans: int = 3, embed_dim: int = 64) -> None:
        super().__init__()
        if embed_dim % 8 != 0:
            raise ValueError(f"embed_dim must be a multiple of 8, got {embed_dim}")
        widths = (embed_dim // 2, embed_dim // 4, embed_dim // 8, embed_dim // 8)
        self.projs = nn.ModuleList(
            nn.Conv2d(in_chans, w, kernel_size=k, stride=2, padding=k // 2 - 1)
            for k, w in zip(self.kernel_sizes, widths)
        )
        self.eca = ECA(3)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, in_chans, H, W) -> (B, embed_dim, H/2, W/2)
        x = torch.cat([proj(x) for proj in self.projs], dim=1)
        return _layer_norm_channels(self.norm, self.eca(x))


class MultiScalePatchMerging(nn.Module):
    """LayerNorm, then stride-2 convolutions with kernels 2 (pad 0) and 4 (pad 1), each dim -> dim, concatenated
    to 2*dim at half resolution, then the residual ECA gate."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.reduce2 = nn.Conv2d(dim, dim, kernel_size=2, stride=2, padding=0)
        self.reduce4 = nn.Conv2d(dim, dim, kernel_size=4, stride=2, padding=1)
        self.eca = ECA(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, dim, H, W) -> (B, 2*dim, H/2, W/2)
        x = _layer_norm_channels(self.norm, x)
        return self.eca(torch.cat([self.reduce2(x), self.reduce4(x)], dim=1))
