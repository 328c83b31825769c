"""ResFormer-MTL: the ResFormer encoder, DFE-enhanced UNet decoder and multi-scale classification head."""

from __future__ import annotations

from typing import Any

import torch

from fastmtl.config import ModelConfig
from fastmtl.models._registry import register_model
from fastmtl.models.base import MTLModel
from fastmtl.models.decoder import UNetDecoder
from fastmtl.models.heads import ClassificationHead
from fastmtl.models.launches import KernelShapes, resformer_shapes
from fastmtl.models.resformer import WIDTHS, ResFormerEncoder
from fastmtl.options import window_step
from fastmtl.output import MTLOutput

HEAD_LEVELS = {"multiscale": (2, 3), "single": (3,), "none": ()}


class ResFormerMTL(MTLModel):
    """Multi-task ResFormer UNet (Bui et al., arXiv 2412.00351).

    ``forward(x)`` returns :class:`MTLOutput` with seg logits (B, seg_classes, H, W) and multi-label class
    logits (B, cls_classes), or ``None`` with ``cls_head="none"`` (segmentation only). The head reads the raw encoder
    outputs; the decoder reads the DFE outputs.

    Args:
        config: see :class:`fastmtl.config.ModelConfig`.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.encoder = ResFormerEncoder(config)
        self.decoder = UNetDecoder(WIDTHS, config.seg_classes, config.dfe, config.dilations, config.kernels)
        levels = HEAD_LEVELS[config.cls_head]
        self.cls_head = ClassificationHead(WIDTHS, config.cls_classes, levels) if levels else None

    def input_step(self) -> int:
        """The window layout's: every stage's token map tiles into whole windows (:func:`fastmtl.options.window_step`,
        the rule the command line applies to a checkpoint before building it)."""
        return window_step(self.config.window)

    def _size_message(self, h: int, w: int, step: int) -> str:
        return (f"input size {h}x{w} does not fit the window layout: this model was built for img_size="
                f"{self.config.img_size} (window side {self.config.window}), so H and W must be multiples of {step}; "
                f"resize the input to a multiple of {step}")  # fmt: skip

    def kernel_shapes(self, img_size: int | None = None) -> KernelShapes:
        """Its DFEs' and window attentions' launch shapes (:func:`fastmtl.models.launches.resformer_shapes`)."""
        return resformer_shapes(self.config, self.config.img_size if img_size is None else img_size)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder outputs e0..e3: (B, 64, H/2, W/2) ... (B, 512, H/16, W/16)."""
        return self.encoder(x)

    def forward_head(self, feats: list[torch.Tensor]) -> MTLOutput:
        return MTLOutput(self.decoder(feats), None if self.cls_head is None else self.cls_head(feats))


def _build(name: str, overrides: dict[str, Any], **defaults: Any) -> ResFormerMTL:
    return ResFormerMTL(ModelConfig(name=name, **{**defaults, **overrides}))


_RESFORMER_OPTIONS = (
    "img_size",
    "in_chans",
    "seg_classes",
    "cls_classes",
    "dilations",
    "drop_path_rate",
    "dfe",
    "cls_head",
    "eca_layout",
    "kernels",
)


@register_model(_RESFORMER_OPTIONS)
def resformer_mtl(**kwargs: Any) -> ResFormerMTL:
    """Parallel fusion + four-branch DFE + two-level head: the paper's model (default)."""
    return _build("resformer_mtl", kwargs, fusion="parallel", dfe="four")


@register_model(_RESFORMER_OPTIONS)
def resformer_mtl_serial(**kwargs: Any) -> ResFormerMTL:
    """Serial fusion: each Swin stage runs on the sum of the conv stage and the patch merge."""
    return _build("resformer_mtl_serial", kwargs, fusion="serial", dfe="four")


@register_model(_RESFORMER_OPTIONS)
def resformer_mtl_nodfe(**kwargs: Any) -> ResFormerMTL:
    """Parallel fusion without DFE: the variant the authors' ISIC training script builds."""
    return _build("resformer_mtl_nodfe", kwargs, fusion="parallel", dfe="none")
