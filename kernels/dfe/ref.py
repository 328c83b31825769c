"""The PyTorch references of the DFE ops: test oracles, fp32 baselines and the CPU path at once (no Triton).

Weights are in the kernels' ``(taps, C_in, C_out)`` layout (:func:`taps_from_conv_weight`). ``upcast=True``
computes in fp32 and returns the input dtype (the kernels' numerics: fp32 accumulation); ``upcast=False`` computes
in the input dtype.
"""

from __future__ import annotations

from functools import reduce

import torch
from torch.nn import functional as F


def _upcast(upcast: bool, *tensors):
    return tuple(None if t is None else t.float() for t in tensors) if upcast else tensors


def _back(y: torch.Tensor, dtype: torch.dtype, upcast: bool) -> torch.Tensor:
    return y.to(dtype) if upcast else y


def taps_from_conv_weight(w: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, k, k) conv weight -> (k*k, C_in, C_out) kernel taps, row-major over the k x k window."""
    return w.permute(2, 3, 1, 0).reshape(-1, w.shape[1], w.shape[0])


def conv_weight_from_taps(taps: torch.Tensor, rate: int, center: bool = True) -> torch.Tensor:
    """(T, C_in, C_out) taps of one pattern -> (C_out, C_in, k, k) conv weight (rate 0: 1x1 from tap 0).

    ``center=False`` zeroes the centre tap (the kernel skips it: DFE3 pre-sums the centres into branch 0).
    """
    if rate == 0:
        return taps[0].t()[:, :, None, None]
    w = taps[:9].reshape(3, 3, *taps.shape[1:]).permute(3, 2, 0, 1)
    return w if center else drop_center(w)


def drop_center(w: torch.Tensor) -> torch.Tensor:
    """Zeroes the centre tap of a (C_out, C_in, 3, 3) weight (out of place, differentiable)."""
    keep = torch.ones(3, 3, dtype=w.dtype, device=w.device)
    keep[1, 1] = 0
    return w * keep


def dfe_branches_ref(x, weight, bias=None, rates=(0,), sum_branches=False, relu=False, upcast=False):
    """Reference of ``fastmtl::dfe_branches``: per-branch convs, concatenated (or summed), + bias, ReLU."""
    dtype, (x, weight) = x.dtype, _upcast(upcast, x, weight)
    outs = [
        F.conv2d(x, conv_weight_from_taps(weight[i], r, not (sum_branches and i > 0)), padding=r, dilation=max(r, 1))
        for i, r in enumerate(rates)
    ]
    y = reduce(torch.add, outs) if sum_branches else torch.cat(outs, dim=1)  # (B, nb*C or C, H, W)
    if bias is not None:
        y = y + bias.to(y.dtype)[:, None, None]
    return _back(torch.relu(y) if relu else y, dtype, upcast)


def dfe_merge_ref(cat, x, weight, shortcut=None, bias=None, relu=False, upcast=False):
    """Reference of ``fastmtl::dfe_merge``: 3x3 conv over ``cat`` (+ 1x1 shortcut conv on ``x``) + bias, ReLU."""
    dtype, (cat, x, weight, shortcut) = cat.dtype, _upcast(upcast, cat, x, weight, shortcut)
    y = F.conv2d(cat, conv_weight_from_taps(weight, 1), padding=1)  # (B, C, H, W)
    if shortcut is not None:
        y = y + F.conv2d(x, conv_weight_from_taps(shortcut, 0))
    if bias is not None:
        y = y + bias.to(y.dtype)[:, None, None]
    return _back(torch.relu(y) if relu else y, dtype, upcast)


def spatial_attention_ref(x: torch.Tensor, weight: torch.Tensor, upcast: bool = False) -> torch.Tensor:
    """Reference spatial attention: ``x * sigmoid(conv7x7([mean_c(x), max_c(x)]))``.

    Args:
        x: (B, C, H, W) features.
        weight: (1, 2, k, k) convolution weight; input channel 0 reads the channel mean, 1 the channel max.
        upcast: pool, gate and multiply in fp32 (the kernels pool in fp32), returning x's dtype.
    """
    dtype, (x, weight) = x.dtype, _upcast(upcast, x, weight)
    pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)
    gate = torch.sigmoid(F.conv2d(pooled, weight, padding=weight.shape[-1] // 2))  # (B, 1, H, W)
    return _back(x * gate, dtype, upcast)
