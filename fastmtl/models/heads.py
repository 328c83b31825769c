"""Classification heads on the raw encoder outputs (SPEC.md §3)."""

from __future__ import annotations

import torch
from torch import nn


class PooledBranch(nn.Sequential):
    """BN -> ReLU -> global average pool -> flatten: (B, C, H, W) -> (B, C)."""

    def __init__(self, channels: int) -> None:
        super().__init__(nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


class ClassificationHead(nn.Module):
    """Pooled encoder levels, concatenated -> Linear(sum, hidden) -> Linear(hidden, classes), no activation.

    With ``levels=(2, 3)`` (e2: 256 and e3: 512 channels, 768 in all) this is the paper's two-level head;
    ``levels=(3,)`` is the one-level ablation and the baselines' head. Xavier-normal weights.

    Args:
        widths: channels of every encoder level.
        classes: multi-label logits.
        levels: which encoder levels feed the head.
        hidden: width of the bottleneck layer.
    """

    def __init__(self, widths: tuple[int, ...], classes: int, levels: tuple[int, ...] = (2, 3), hidden: int = 32):
        super().__init__()
        self.levels = levels
        # e3 first, as the authors concatenate (e3, e2); the order fixes the layout of fc1's weight.
        self.pools = nn.ModuleList(PooledBranch(widths[i]) for i in sorted(levels, reverse=True))
        self.fc1 = nn.Linear(sum(widths[i] for i in levels), hidden)
        self.fc2 = nn.Linear(hidden, classes)
        nn.init.xavier_normal_(self.fc1.weight)
        nn.init.xavier_normal_(self.fc2.weight)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:  # [e0..e3] -> (B, classes)
        ordered = [feats[i] for i in sorted(self.levels, reverse=True)]
        pooled = torch.cat([pool(f) for pool, f in zip(self.pools, ordered)], dim=1)
        return self.fc2(self.fc1(pooled))
