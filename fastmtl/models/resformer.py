"""The ResFormer encoder: a ResNet-34 trunk with a stride-1 stem, Swin stages, and their fusion (SPEC.md §1)."""

from __future__ import annotations

import torch
from torch import nn

from fastmtl.config import ModelConfig
from fastmtl.layers.patch_embed import MultiScalePatchEmbed, MultiScalePatchMerging
from fastmtl.layers.swin import SwinStage

WIDTHS = (64, 128, 256, 512)
DEPTHS = (3, 4, 6, 3)  # ResNet-34 BasicBlocks per stage
SWIN_DEPTHS = (2, 2, 2, 2)
SWIN_HEADS = (2, 4, 8, 16)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus identity (or 1x1 stride-s conv + BN), then ReLU; torchvision key names."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def conv_bn_pairs(self) -> tuple[tuple[str, str], ...]:
        """(conv, BN) attribute pairs computed as ``bn(conv(x))`` (the downsample is a Sequential pair)."""
        return (("conv1", "bn1"), ("conv2", "bn2"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet34Trunk(nn.Module):
    """ResNet-34 without its classifier; the 7x7 stem conv has stride 1 (the max-pool keeps stride 2).

    Outputs e0..e3: 64 @ H/2, 128 @ H/4, 256 @ H/8, 512 @ H/16. Attribute names follow torchvision, so an
    ImageNet state_dict loads directly (see :func:`fastmtl.weights.load_trunk_weights`).
    """

    def __init__(self, in_chans: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=1, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        for i, (width, depth) in enumerate(zip(WIDTHS, DEPTHS)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(cin, width, stride)] + [BasicBlock(width, width) for _ in range(depth - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = width

    def conv_bn_pairs(self) -> tuple[tuple[str, str], ...]:
        """(conv, BN) attribute pairs computed as ``bn(conv(x))``: the stem."""
        return (("conv1", "bn1"),)

    def stem(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, 64, H/2, W/2)
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def stage(self, i: int) -> nn.Sequential:
        return getattr(self, f"layer{i + 1}")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, x = [], self.stem(x)
        for i in range(4):
            x = self.stage(i)(x)
            feats.append(x)
        return feats


class ResFormerEncoder(nn.Module):
    """ResNet-34 convolutions and Swin stages on the same features, fused per stage.

    parallel: F0 = stem(x) + PatchEmbed(x); F1 = layer1(F0) + Swin1(F0); Fi = layer_i(F_{i-1}) +
    Swin_i(PatchMerge_i(F_{i-1})). serial: F0 = stem(x); F1 = Swin1(layer1(F0) + PatchEmbed(x));
    Fi = Swin_i(layer_i(F_{i-1}) + PatchMerge_i(F_{i-1})).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fusion = config.fusion
        self.window = config.window
        self.trunk = ResNet34Trunk(config.in_chans)
        self.patch_embed = MultiScalePatchEmbed(config.in_chans, WIDTHS[0])
        self.patch_merges = nn.ModuleList(MultiScalePatchMerging(w) for w in WIDTHS[:-1])
        n = sum(SWIN_DEPTHS)
        rates = [config.drop_path_rate * i / (n - 1) for i in range(n)]  # linear 0 -> rate (plain floats)
        self.swin_stages = nn.ModuleList()
        for i, (width, depth, heads) in enumerate(zip(WIDTHS, SWIN_DEPTHS, SWIN_HEADS)):
            start = sum(SWIN_DEPTHS[:i])
            stage = SwinStage(
                width,
                depth,
                heads,
                config.window,
                drop_path=rates[start : start + depth],
                eca_layout=config.eca_layout,
                kernels=config.kernels,
            )
            self.swin_stages.append(stage)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # (B, in, H, W) -> [e0, e1, e2, e3]
        trunk, feats = self.trunk, []
        if self.fusion == "parallel":
            f = trunk.stem(x) + self.patch_embed(x)
            for i in range(4):
                t = f if i == 0 else self.patch_merges[i - 1](f)
                f = trunk.stage(i)(f) + self.swin_stages[i](t)
                feats.append(f)
        else:
            f = trunk.stem(x)
            for i in range(4):
                t = self.patch_embed(x) if i == 0 else self.patch_merges[i - 1](f)
                f = self.swin_stages[i](trunk.stage(i)(f) + t)
                feats.append(f)
        return feats
