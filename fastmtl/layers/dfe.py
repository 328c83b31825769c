"""Dilated feature enhancement (DFE) on the skip connections and the bottleneck (SPEC.md §2).

:class:`DFE` is the four-branch module of the authors' code (1x1 and dilated 3x3 branches, 3x3 merge over the
concatenation, 1x1 shortcut, ReLU, spatial attention). :class:`DFE3` is the three-branch module the paper's text
describes. Both keep the channel count. On the Triton backend both run the fused kernels of
``fastmtl.kernels.dfe``: the modules gather their weights, fold their BNs (:meth:`ConvBN.folded`, the library's one
fold) and call the tensor ops. Eval: BN folded on the fly (nothing cached; the state_dict stays untouched; ConvBNs
already folded by ``inference.optimize`` work the same). Training: raw conv kernels + the modules' own BatchNorms,
so running statistics follow PyTorch exactly. State_dicts are the same on every backend.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from fastmtl.backend import KernelLayer
from fastmtl.kernels.dfe.ref import taps_from_conv_weight as _taps
from fastmtl.layers.conv_bn import ConvBN
from fastmtl.layers.spatial_attention import SpatialAttention

__all__ = ["DFE", "DFE3", "ConvBN"]


def _stack(taps: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Stacks per-branch taps to (nb, T, C_in, C_out), zero-padding 1x1 branches (they read tap 0) to T taps."""
    n = max(t.shape[0] for t in taps)
    padded = [t if t.shape[0] == n else torch.cat([t, t.new_zeros(n - t.shape[0], *t.shape[1:])]) for t in taps]
    return torch.stack(padded).to(dtype)


def _check_dilations(dilations: tuple[int, ...]) -> tuple[int, ...]:
    dilations = tuple(int(d) for d in dilations)
    if not dilations or any(d < 1 for d in dilations):
        raise ValueError(f"dilations must be a non-empty sequence of positive ints, got {dilations}")
    return dilations


class DFE(KernelLayer):
    """Four-branch DFE: ``SA(ReLU(BN(conv3x3(cat(branches))) + BN(conv1x1(x))))``.

    Each branch is conv (no bias) -> BN -> ReLU with ``channels`` outputs: a 1x1 conv and one 3x3 conv per
    dilation rate (padding = dilation).

    Args:
        channels: input and output channels.
        dilations: rates of the dilated 3x3 branches (default 6, 12, 18).
        kernels: ``"reference"``, ``"triton"`` or ``"auto"``.
    """

    def __init__(self, channels: int, dilations: tuple[int, ...] = (6, 12, 18), kernels: str | None = None) -> None:
        super().__init__(kernels)
        self.dilations = _check_dilations(dilations)
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
        if self.runs_triton(x):
            return self.forward_triton(x)
        return self.forward_reference(x)

    def forward_triton(self, x: torch.Tensor) -> torch.Tensor:
        """The fused kernels (eval, BN folded) or the raw conv kernels + this module's BatchNorms (training)."""
        from fastmtl.kernels.dfe import dfe_branches, dfe_merge, spatial_attention

        rates = [b.rate for b in self.branches]
        if not any(cb.uses_batch_stats() for cb in (*self.branches, self.merge, self.shortcut)):
            taps, biases = zip(*((_taps(w), b) for w, b in (cb.folded() for cb in self.branches)), strict=True)
            cat = dfe_branches(
                x, _stack(list(taps), x.dtype), rates=rates, bias=torch.cat(biases), relu=True
            )  # (B, nb*C, H, W)
            (wm, bm), (ws, bs) = self.merge.folded(), self.shortcut.folded()
            y = dfe_merge(cat, x, _taps(wm).to(x.dtype), shortcut=_taps(ws).to(x.dtype), bias=bm + bs, relu=True)
        else:
            weight = _stack([_taps(b.conv.weight.float()) for b in self.branches], x.dtype)
            raw = dfe_branches(x, weight, rates=rates)
            c = raw.shape[1] // len(rates)
            cat = torch.cat([torch.relu(b.bn(raw[:, i * c : (i + 1) * c])) for i, b in enumerate(self.branches)], 1)
            merged = dfe_merge(cat, x, _taps(self.merge.conv.weight).to(x.dtype))
            short = dfe_branches(x, _stack([_taps(self.shortcut.conv.weight)], x.dtype), rates=[0])
            y = torch.relu(self.merge.bn(merged) + self.shortcut.bn(short))
        return spatial_attention(y, self.attention.conv.weight)


class DFE3(KernelLayer):
    """Three-branch DFE of the paper's text: ``SA(ReLU(sum_d BN(conv1x1(BN(conv3x3_d(x))))))``.

    Args:
        channels: input and output channels.
        dilations: one branch per rate (default 6, 12, 18).
        kernels: ``"reference"``, ``"triton"`` or ``"auto"``. On the Triton path the branches, linear up to the sum,
            fold at inference into one set of dilated taps run by one kernel (see ``fastmtl.kernels.dfe``).
    """

    def __init__(self, channels: int, dilations: tuple[int, ...] = (6, 12, 18), kernels: str | None = None) -> None:
        super().__init__(kernels)
        self.dilations = _check_dilations(dilations)
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
        if self.runs_triton(x):
            return self.forward_triton(x)
        return self.forward_reference(x)

    def forward_triton(self, x: torch.Tensor) -> torch.Tensor:
        """Eval: every branch is linear up to the sum, so ``BN2(conv1x1(BN1(conv3x3_d(x))))`` folds into one dilated
        3x3 and the branches' shared centre taps into one (``1 + 8 * nb`` taps), run by one
        ``dfe_branches(sum_branches=True)`` launch with bias and ReLU. Training: the dilated convs run as raw
        kernels, the BNs and 1x1s are this module's own."""
        from fastmtl.kernels.dfe import dfe_branches, spatial_attention

        rates = [b.dilated.rate for b in self.branches]
        if not any(cb.uses_batch_stats() for b in self.branches for cb in (b.dilated, b.point)):
            taps, biases = [], []
            for branch in self.branches:
                (w1, b1), (w2, b2) = branch.dilated.folded(), branch.point.folded()
                point = w2[:, :, 0, 0]  # (C_out, C_mid)
                taps.append(_taps(w1) @ point.t())  # (9, C_in, C_out)
                biases.append(point @ b1 + b2)
            centre = sum(t[4] for t in taps)
            first = torch.cat([taps[0][:4], centre[None], taps[0][5:]])
            y = dfe_branches(
                x, _stack([first, *taps[1:]], x.dtype), rates=rates, bias=sum(biases), sum_branches=True, relu=True
            )
        else:
            weight = _stack([_taps(b.dilated.conv.weight.float()) for b in self.branches], x.dtype)
            raw = dfe_branches(x, weight, rates=rates)  # (B, nb*C_mid, H, W)
            c = raw.shape[1] // len(rates)
            parts = [b.point(b.dilated.bn(raw[:, i * c : (i + 1) * c])) for i, b in enumerate(self.branches)]
            y = torch.relu(sum(parts[1:], parts[0]))
        return spatial_attention(y, self.attention.conv.weight)
