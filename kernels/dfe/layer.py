"""Entry points of :class:`fastmtl.layers.dfe.DFE` / ``DFE3`` on the Triton path: BN folding on the fly, the fused
eval path, and the training path (raw conv kernels + the layer's own BatchNorm modules).

Nothing is cached: folding costs a few small elementwise ops per call, and the state_dict stays untouched.
"""

from __future__ import annotations

import torch
from torch import nn

from .ops import dfe_branches, dfe_merge, spatial_attention, taps_from_conv_weight


def _uses_batch_stats(bn: nn.BatchNorm2d) -> bool:
    return bn.training or bn.running_mean is None


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as fp32 ``(scale, shift)``: ``bn(y) == y * scale + shift``."""
    scale = torch.rsqrt(bn.running_var.float() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.float()
    shift = -bn.running_mean.float() * scale
    return scale, shift if bn.bias is None else shift + bn.bias.float()


def _taps(conv_bn: nn.Sequential, fold: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(T, C_in, C_out) fp32 taps of a ConvBN, BN folded in when ``fold`` (then also the fp32 shift)."""
    w = conv_bn.conv.weight.float()
    if not fold:
        return taps_from_conv_weight(w), None
    scale, shift = _bn_affine(conv_bn.bn)
    return taps_from_conv_weight(w * scale[:, None, None, None]), shift


def _rate(conv: nn.Conv2d) -> int:
    return 0 if conv.kernel_size[0] == 1 else conv.dilation[0]


def _stack(taps: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Stacks per-branch taps to (nb, T, C_in, C_out), zero-padding 1x1 branches (they read tap 0) to T taps."""
    n = max(t.shape[0] for t in taps)
    padded = [t if t.shape[0] == n else torch.cat([t, t.new_zeros(n - t.shape[0], *t.shape[1:])]) for t in taps]
    return torch.stack(padded).to(dtype)


def dfe_forward(module, x: torch.Tensor) -> torch.Tensor:
    """Forward of a :class:`~fastmtl.layers.dfe.DFE` with the fused kernels (eval) or raw kernels + BN (training)."""
    rates = [_rate(b.conv) for b in module.branches]
    convs = [*module.branches, module.merge, module.shortcut]
    if not any(_uses_batch_stats(cb.bn) for cb in convs):
        taps, shifts = zip(*(_taps(b, True) for b in module.branches), strict=True)
        cat = dfe_branches(x, _stack(list(taps), x.dtype), torch.cat(shifts), rates, False, True)  # (B, nb*C, H, W)
        (wm, bm), (ws, bs) = _taps(module.merge, True), _taps(module.shortcut, True)
        y = dfe_merge(cat, x, wm.to(x.dtype), ws.to(x.dtype), bm + bs, True)
    else:
        raw = dfe_branches(x, _stack([_taps(b, False)[0] for b in module.branches], x.dtype), None, rates, False, False)
        c = raw.shape[1] // len(rates)
        cat = torch.cat([torch.relu(b.bn(raw[:, i * c : (i + 1) * c])) for i, b in enumerate(module.branches)], 1)
        merged = dfe_merge(cat, x, _taps(module.merge, False)[0].to(x.dtype), None, None, False)
        short = dfe_branches(x, _stack([_taps(module.shortcut, False)[0]], x.dtype), None, [0], False, False)
        y = torch.relu(module.merge.bn(merged) + module.shortcut.bn(short))
    return spatial_attention(y, module.attention.conv.weight)


def _fold_dfe3_branch(branch: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
    """``BN2(conv1x1(BN1(conv3x3_d(x))))`` as one dilated 3x3: fp32 taps (9, C_in, C_out) and bias (C_out,)."""
    taps, shift1 = _taps(branch.dilated, True)  # (9, C_in, C_mid)
    scale2, shift2 = _bn_affine(branch.point.bn)
    point = branch.point.conv.weight[:, :, 0, 0].float() * scale2[:, None]  # (C_out, C_mid)
    return taps @ point.t(), point @ shift1 + shift2


def dfe3_forward(module, x: torch.Tensor) -> torch.Tensor:
    """Forward of a :class:`~fastmtl.layers.dfe.DFE3`.

    Eval: every branch is linear up to the sum, so each folds into one dilated 3x3 and their shared centre taps
    into one (``1 + 8 * nb`` taps), run by one ``dfe_branches(sum_branches=True)`` launch with bias and ReLU.
    Training: the dilated convs run as raw kernels, the BNs and 1x1s are the layer's own modules.
    """
    rates = [_rate(b.dilated.conv) for b in module.branches]
    bns = [cb.bn for b in module.branches for cb in (b.dilated, b.point)]
    if not any(_uses_batch_stats(bn) for bn in bns):
        taps, biases = zip(*(_fold_dfe3_branch(b) for b in module.branches), strict=True)
        centre = sum(t[4] for t in taps)
        first = torch.cat([taps[0][:4], centre[None], taps[0][5:]])
        y = dfe_branches(x, _stack([first, *taps[1:]], x.dtype), sum(biases), rates, True, True)
    else:
        weight = _stack([_taps(b.dilated, False)[0] for b in module.branches], x.dtype)
        raw = dfe_branches(x, weight, None, rates, False, False)  # (B, nb*C_mid, H, W)
        c = raw.shape[1] // len(rates)
        parts = [b.point(b.dilated.bn(raw[:, i * c : (i + 1) * c])) for i, b in enumerate(module.branches)]
        y = torch.relu(sum(parts[1:], parts[0]))
    return spatial_attention(y, module.attention.conv.weight)
