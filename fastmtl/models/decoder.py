"""UNet decoder with optional DFE on every skip and on the bottleneck, and the segmentation head (SPEC.md §3)."""

from __future__ import annotations

import torch
from torch import nn

from fastmtl.layers.dfe import DFE, DFE3


class DecoderBlock(nn.Module):
    """ConvTranspose2d(k2, s2, bias) -> concat skip -> 3x3 conv (bias) -> BN -> ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
        self.conv = nn.Conv2d(2 * cout, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)

    def conv_bn_pairs(self) -> tuple[tuple[str, str], ...]:
        """(conv, BN) attribute pairs computed as ``bn(conv(x))`` (see :mod:`fastmtl.layers.conv_bn`)."""
        return (("conv", "bn"),)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.up(x), skip], dim=1)
        return torch.relu(self.bn(self.conv(x)))


class SegmentationHead(nn.Sequential):
    """Bilinear x2 upsample (align_corners=True) -> 1x1 conv (no bias) to the class logits."""

    def __init__(self, cin: int, classes: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), nn.Conv2d(cin, classes, 1, bias=False)
        )


class UNetDecoder(nn.Module):
    """Three decoder blocks from e3 up to H/2, then the segmentation head at full resolution.

    Args:
        widths: encoder widths (64, 128, 256, 512).
        seg_classes: output channels of the head.
        dfe: "four", "three" or "none": the enhancement applied to e0..e3 before they are used.
        dilations: DFE dilation rates.
        kernels: DFE backend.
    """

    def __init__(
        self,
        widths: tuple[int, ...],
        seg_classes: int,
        dfe: str = "none",
        dilations: tuple[int, ...] = (6, 12, 18),
        kernels: str | None = None,
    ) -> None:
        super().__init__()
        if dfe == "none":
            self.dfe = nn.ModuleList(nn.Identity() for _ in widths)
        else:
            cls = DFE if dfe == "four" else DFE3
            self.dfe = nn.ModuleList(cls(w, dilations, kernels=kernels) for w in widths)
        self.blocks = nn.ModuleList(DecoderBlock(widths[i + 1], widths[i]) for i in reversed(range(len(widths) - 1)))
        self.head = SegmentationHead(widths[0], seg_classes)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:  # [e0..e3] -> (B, seg_classes, H, W)
        skips = [enhance(f) for enhance, f in zip(self.dfe, feats)]
        x = skips[-1]
        for block, skip in zip(self.blocks, reversed(skips[:-1])):
            x = block(x, skip)
        return self.head(x)
