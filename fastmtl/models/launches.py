"""The kernel launches a model makes, derived from its own layout: one place says which DFE and window-attention
shapes run at an image size, and the kernel reports (:mod:`fastmtl.kernel_report`), the benchmarks (``bench/``)
and the ahead-of-time compilation tests read it here instead of keeping a copy of the widths, heads and dilations.

Encoder level i has ``WIDTHS[i]`` channels at ``img_size / 2^(i+1)``; a DFE runs on every level (the decoder's
skips and bottleneck); Swin stage i runs ``SWIN_HEADS[i]`` heads of ``WIDTHS[i] / SWIN_HEADS[i]`` channels over
windows of ``config.window`` tokens, and its second block shifts when the map holds more than one window. A shape
is per image: a launch's batch multiplies its grid, not its configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastmtl.config import DEFAULT_DILATIONS, ModelConfig
from fastmtl.models.resformer import SWIN_HEADS, WIDTHS

__all__ = [
    "IMG_SIZES",
    "DFEShape",
    "KernelShapes",
    "WindowAttentionShape",
    "dfe_shapes",
    "resformer_shapes",
    "window_attention_shapes",
]

IMG_SIZES = (224, 512)  # the sizes the kernels are reported and benchmarked at: the paper's and a larger one


@dataclass(frozen=True)
class DFEShape:
    """One DFE level: channels and spatial side for a given model input size, and the DFE's dilation rates."""

    img_size: int
    level: int
    channels: int
    side: int
    dilations: tuple[int, ...] = DEFAULT_DILATIONS

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
    head_dim: int = WIDTHS[0] // SWIN_HEADS[0]

    @property
    def shifted(self) -> bool:
        return self.side > self.window

    @property
    def name(self) -> str:
        return f"swin{self.stage}-{self.side}px-w{self.window}-h{self.heads}@{self.img_size}"


@dataclass(frozen=True)
class KernelShapes:
    """Every kernel-backed layer's launch shape of one model at one input size (what
    :meth:`fastmtl.models.base.MTLModel.kernel_shapes` returns; empty for a model without kernel-backed layers)."""

    dfe: tuple[DFEShape, ...] = ()
    window_attention: tuple[WindowAttentionShape, ...] = ()


def resformer_shapes(config: ModelConfig, img_size: int) -> KernelShapes:
    """The launch shapes of the ResFormer that ``config`` describes on ``img_size`` inputs: a DFE per encoder level
    (none with ``dfe="none"``) and a window attention per Swin stage."""
    levels = list(enumerate(WIDTHS))
    return KernelShapes(
        dfe=tuple(
            DFEShape(img_size, i, c, img_size // 2 ** (i + 1), config.dilations)
            for i, c in levels
            if config.dfe != "none"
        ),
        window_attention=tuple(
            WindowAttentionShape(
                img_size, i, img_size // 2 ** (i + 1), config.window, SWIN_HEADS[i], c // SWIN_HEADS[i]
            )
            for i, c in levels
        ),
    )


def _paper(img_size: int) -> KernelShapes:
    return resformer_shapes(ModelConfig(name="resformer_mtl", img_size=img_size, kernels="reference"), img_size)


def dfe_shapes(img_sizes: tuple[int, ...] = IMG_SIZES) -> list[DFEShape]:
    """The paper model's DFE launches, built for and run at each of ``img_sizes``."""
    return [shape for size in img_sizes for shape in _paper(size).dfe]


def window_attention_shapes(img_sizes: tuple[int, ...] = IMG_SIZES) -> list[WindowAttentionShape]:
    """The paper model's window-attention launches, built for and run at each of ``img_sizes``."""
    return [shape for size in img_sizes for shape in _paper(size).window_attention]
