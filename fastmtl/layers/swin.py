"""Swin Transformer blocks with (shifted) window attention and a relative position bias (SPEC.md §1).

Tokens are kept as (B, H, W, C) maps. The attention itself is ``fastmtl.kernels.window_attention``'s reference
:func:`window_attention_ref` (pure PyTorch: roll, window partition, bias gather, seam mask, softmax attention,
reverse) or its fused Triton kernel, which computes the same thing without the copies.
"""

from __future__ import annotations

import torch
from torch import nn

from fastmtl.backend import KernelLayer

# The window helpers and the reference live with the kernel (``fastmtl.kernels.window_attention.ref``, no Triton)
# and are re-exported here for the layers' users.
from fastmtl.kernels.window_attention.ref import (
    MASK_VALUE,
    relative_position_index,
    seam_mask,
    shift_region_ids,
    window_attention_ref,
    window_partition,
    window_reverse,
)
from fastmtl.layers.drop import DropPath
from fastmtl.layers.eca import ECA

__all__ = ["MASK_VALUE", "Mlp", "SwinBlock", "SwinStage", "WindowAttention", "relative_position_index", "seam_mask",
           "shift_region_ids", "window_attention_ref", "window_partition", "window_reverse"]  # fmt: skip


class WindowAttention(KernelLayer):
    """W-MSA / SW-MSA: qkv Linear (bias), relative position bias, softmax attention, output Linear.

    Args:
        dim: token channels.
        num_heads: attention heads (head dim = dim / num_heads).
        window: window side.
        kernels: ``"reference"``, ``"triton"`` or ``"auto"`` (see :mod:`fastmtl.backend`).
    """

    def __init__(self, dim: int, num_heads: int, window: int, kernels: str | None = None) -> None:
        super().__init__(kernels)
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, shift: int = 0) -> torch.Tensor:  # x: (B, H, W, C)
        b, h, w, c = x.shape
        qkv = self.qkv(x).view(b, h, w, 3, self.num_heads, c // self.num_heads)
        if self.runs_triton(x):
            from fastmtl.kernels.window_attention import window_attention

            out = window_attention(qkv, self.relative_position_bias_table, window=self.window, shift=shift)
        else:
            out = window_attention_ref(qkv, self.relative_position_bias_table, self.window, shift)
        return self.proj(out)


class Mlp(nn.Module):
    """Linear -> GELU -> Linear -> residual ECA gate over the token map.

    ``eca_layout="transpose"`` (default) applies the ECA to the tokens as a proper (B, C, H, W) map.
    ``"authors"`` reproduces the original code, which views (B, H*W, C) memory as (B, C, H, W) without a
    transpose and flattens back with one, scrambling token positions; kept only for comparison and for
    running checkpoints trained with it.
    """

    def __init__(self, dim: int, hidden: int, eca_layout: str = "transpose") -> None:
        super().__init__()
        if eca_layout not in ("transpose", "authors"):
            raise ValueError(f"eca_layout must be 'transpose' or 'authors', got {eca_layout!r}")
        self.eca_layout = eca_layout
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.eca = ECA(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, H, W, C)
        b, h, w, c = x.shape
        x = self.fc2(self.act(self.fc1(x)))
        if self.eca_layout == "transpose":
            return self.eca(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        scrambled = self.eca(x.reshape(b, c, h, w))  # memory of (B, N, C) read as (B, C, H, W)
        return scrambled.flatten(2).transpose(1, 2).reshape(b, h, w, c)


class SwinBlock(nn.Module):
    """Pre-norm Swin block: ``x + DropPath(W-MSA(LN(x)))``, then ``x + DropPath(MLP(LN(x)))``.

    Args:
        dim: channels.
        num_heads: attention heads.
        window: window side.
        shift: cyclic shift of this block (0 or window // 2); only applied where the map is larger than a
            window, since a single window has no seams.
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        drop_path: stochastic depth probability.
        eca_layout: see :class:`Mlp`.
        kernels: attention backend.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        shift: int = 0,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        eca_layout: str = "transpose",
        kernels: str | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= shift < window:
            raise ValueError(f"shift must be in [0, window={window}), got {shift}")
        self.shift = shift
        self.window = window
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window, kernels=kernels)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), eca_layout=eca_layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, H, W, C)
        _, h, w, _ = x.shape
        if h % self.window or w % self.window:
            raise ValueError(f"token map {h}x{w} is not a multiple of the window side {self.window}")
        shift = self.shift if min(h, w) > self.window else 0
        x = x + self.drop_path(self.attn(self.norm1(x), shift=shift))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinStage(nn.Module):
    """``depth`` Swin blocks on a (B, C, H, W) map; odd-numbered blocks shift by half a window."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: int,
        drop_path: list[float],
        mlp_ratio: float = 4.0,
        eca_layout: str = "transpose",
        kernels: str | None = None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                num_heads,
                window,
                shift=window // 2 if i % 2 else 0,
                mlp_ratio=mlp_ratio,
                drop_path=drop_path[i],
                eca_layout=eca_layout,
                kernels=kernels,
            )
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W) -> (B, C, H, W)
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        return x.permute(0, 3, 1, 2)
