"""Shape tables shared by the kernel benchmarks, the ahead-of-time compilation tests and the model benchmarks.

Every entry is derived from the model's layout (SPEC.md §1-3): encoder level i has WIDTHS[i] channels at
input/2^(i+1), the Swin window side is input // 16 and the head dim is 32.
"""

from __future__ import annotations

from dataclasses import dataclass

IMG_SIZES = (224, 512)
GPU_BATCHES = (1, 8, 64)
SUITE_BATCH = 64  # the batch the GPU suite judges kernel and inference goals at
CPU_BATCHES = (1, 8)
WIDTHS = (64, 128, 256, 512)
SWIN_HEADS = (2, 4, 8, 16)
DILATIONS = (6, 12, 18)


@dataclass(frozen=True)
class DFEShape:
    """One DFE level: channels and spatial side for a given model input size."""

    img_size: int
    level: int
    channels: int
    side: int

    @property
    def name(self) -> str:
        return f"dfe{self.level}-{self.channels}c-{self.side}px@{self.img_size}"


@dataclass(frozen=True)
class WindowAttentionShape:
    """One Swin stage: token map side, window side, heads, head dim, and whether its 2nd block shifts."""

    img_size: int
    stage: int
    side: int
    window: int
    heads: int
    head_dim: int = 32

    @property
    def shifted(self) -> bool:
        return self.side > self.window

    @property
    def name(self) -> str:
        return f"swin{self.stage}-{self.side}px-w{self.window}-h{self.heads}@{self.img_size}"


def dfe_shapes(img_sizes: tuple[int, ...] = IMG_SIZES) -> list[DFEShape]:
    return [DFEShape(s, i, c, s // 2 ** (i + 1)) for s in img_sizes for i, c in enumerate(WIDTHS)]


def window_attention_shapes(img_sizes: tuple[int, ...] = IMG_SIZES) -> list[WindowAttentionShape]:
    return [
        WindowAttentionShape(s, i, s // 2 ** (i + 1), s // 16, h) for s in img_sizes for i, h in enumerate(SWIN_HEADS)
    ]
