"""The DFE ops' analytic backward, made of ATen ops (cuDNN ``convolution_backward`` on GPU): traceable, so compiled
graphs keep it. :mod:`.ops` registers these ``setup_context`` / ``backward`` pairs with its ``torch.library`` ops."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .ref import conv_weight_from_taps, drop_center, taps_from_conv_weight

__all__ = ["branches_backward", "branches_setup", "merge_backward", "merge_setup", "sa_backward", "sa_setup"]


def _conv_grads(grad, inp, w, rate, needs):
    """(grad_input, grad_weight) of ``conv2d(inp, w, padding=rate, dilation=max(rate, 1))``."""
    pad, dil = [rate, rate], [max(rate, 1)] * 2
    gi, gw, _ = torch.ops.aten.convolution_backward(grad, inp, w, None, [1, 1], pad, dil, False, [0, 0], 1, needs)
    return gi, gw


def _taps_grad(gw: torch.Tensor, n_taps: int) -> torch.Tensor:
    g = taps_from_conv_weight(gw)  # (1 or 9, C_in, C_out)
    return g if g.shape[0] == n_taps else torch.cat([g, g.new_zeros(n_taps - g.shape[0], *g.shape[1:])])


def _relu_grad(grad, out, relu):
    return torch.where(out > 0, grad, torch.zeros_like(grad)) if relu else grad


def branches_setup(ctx, inputs, output):
    x, weight, bias, rates, sum_branches, relu = inputs
    ctx.save_for_backward(x, weight, output if relu else None)
    ctx.rates, ctx.sum_branches, ctx.relu, ctx.has_bias = list(rates), sum_branches, relu, bias is not None


def branches_backward(ctx, grad):
    x, weight, out = ctx.saved_tensors
    grad = _relu_grad(grad, out, ctx.relu)
    c_out, needs = weight.shape[-1], [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False]
    gx, gws = None, []
    for i, r in enumerate(ctx.rates):
        center = not (ctx.sum_branches and i > 0)
        g = grad if ctx.sum_branches else grad[:, i * c_out : (i + 1) * c_out]
        gi, gw = _conv_grads(g, x, conv_weight_from_taps(weight[i], r, center), r, needs)
        if needs[0]:
            gx = gi if gx is None else gx + gi
        if needs[1]:  # the kernel never reads a skipped centre tap, so it gets no gradient
            gws.append(_taps_grad(gw if center else drop_center(gw), weight.shape[1]))
    gbias = grad.sum((0, 2, 3), dtype=torch.float32) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return gx, torch.stack(gws) if needs[1] else None, gbias, None, None, None


def merge_setup(ctx, inputs, output):
    cat, x, weight, shortcut, bias, relu = inputs
    ctx.save_for_backward(cat, x, weight, shortcut, output if relu else None)
    ctx.relu, ctx.has_bias = relu, bias is not None


def merge_backward(ctx, grad):
    cat, x, weight, shortcut, out = ctx.saved_tensors
    grad = _relu_grad(grad, out, ctx.relu)
    need = ctx.needs_input_grad
    gcat, gw = _conv_grads(grad, cat, conv_weight_from_taps(weight, 1), 1, [need[0], need[2], False])
    gx = gs = None
    if shortcut is not None:
        gx, gs = _conv_grads(grad, x, conv_weight_from_taps(shortcut, 0), 0, [need[1], need[3], False])
        gs = taps_from_conv_weight(gs) if need[3] else None
    gw = taps_from_conv_weight(gw) if need[2] else None
    gbias = grad.sum((0, 2, 3), dtype=torch.float32) if ctx.has_bias and need[4] else None
    return gcat, gx, gw, gs, gbias, None


def sa_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def sa_backward(ctx, grad):
    """Closed form in fp32; the max's gradient is shared evenly between tied channels, as ``amax`` does."""
    x, weight = ctx.saved_tensors
    xf, wf, gf, pad = x.float(), weight.float(), grad.float(), weight.shape[-1] // 2
    peak = xf.amax(dim=1, keepdim=True)
    pooled = torch.cat([xf.mean(dim=1, keepdim=True), peak], dim=1)  # (B, 2, H, W)
    gate = torch.sigmoid(F.conv2d(pooled, wf, padding=pad))  # (B, 1, H, W)
    dlogit = (gf * xf).sum(dim=1, keepdim=True) * gate * (1 - gate)
    dpool, dw, _ = torch.ops.aten.convolution_backward(
        dlogit, pooled, wf, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, [True, True, False]
    )
    tie = (xf == peak).to(torch.float32)
    gx = gf * gate + dpool[:, :1] / x.shape[1] + dpool[:, 1:] * tie / tie.sum(dim=1, keepdim=True)
    return gx.to(x.dtype), dw.to(weight.dtype)
