"""Comparison baselines with the same output type: a ResNet-34 UNet (with or without a class head) and a
ResNet-34 classifier. They reuse the ResFormer trunk (stride-1 stem), decoder and head, minus the Swin path
and the DFE, so differences in the results come from what the paper adds."""

from __future__ import annotations

from typing import Any

import torch

from fastmtl.config import ModelConfig
from fastmtl.models._registry import register_model
from fastmtl.models.base import MTLModel
from fastmtl.models.decoder import UNetDecoder
from fastmtl.models.heads import ClassificationHead
from fastmtl.models.resformer import WIDTHS, ResNet34Trunk
from fastmtl.output import MTLOutput

_BASE_OPTIONS = ("img_size", "in_chans", "seg_classes", "cls_classes", "kernels")  # kernels: accepted, no kernel layers


class UNetResNet34(MTLModel):
    """ResNet-34 UNet; with ``cls_head="single"`` it also classifies from e3 (the common multi-task baseline)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.encoder = ResNet34Trunk(config.in_chans)
        self.decoder = UNetDecoder(WIDTHS, config.seg_classes, dfe="none")
        self.cls_head = None if config.cls_head == "none" else ClassificationHead(WIDTHS, config.cls_classes, (3,))

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(x)

    def forward_head(self, feats: list[torch.Tensor]) -> MTLOutput:
        return MTLOutput(self.decoder(feats), None if self.cls_head is None else self.cls_head(feats))


class ResNet34Classifier(MTLModel):
    """ResNet-34 trunk with the one-level head; ``seg_logits`` is None."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.encoder = ResNet34Trunk(config.in_chans)
        self.cls_head = ClassificationHead(WIDTHS, config.cls_classes, (3,))

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(x)

    def forward_head(self, feats: list[torch.Tensor]) -> MTLOutput:
        return MTLOutput(None, self.cls_head(feats))


def _config(name: str, overrides: dict[str, Any], **fixed: Any) -> ModelConfig:
    return ModelConfig(name=name, dfe="none", drop_path_rate=0.0, **fixed, **overrides)


@register_model(_BASE_OPTIONS)
def unet_resnet34_mtl(**kwargs: Any) -> UNetResNet34:
    """ResNet-34 UNet with a one-level classification head."""
    return UNetResNet34(_config("unet_resnet34_mtl", kwargs, cls_head="single"))


@register_model(_BASE_OPTIONS)
def unet_resnet34(**kwargs: Any) -> UNetResNet34:
    """ResNet-34 UNet, segmentation only (``cls_logits`` is None)."""
    return UNetResNet34(_config("unet_resnet34", kwargs, cls_head="none"))


@register_model(_BASE_OPTIONS)
def resnet34_cls(**kwargs: Any) -> ResNet34Classifier:
    """ResNet-34 classifier (``seg_logits`` is None)."""
    return ResNet34Classifier(_config("resnet34_cls", kwargs, cls_head="single"))
