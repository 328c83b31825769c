"""Fused window attention vs eager Swin, compiled eager, SDPA, FlexAttention and xformers (GPU only).

One timed callable per test: ``provider`` x stage shape (``bench.shapes.window_attention_shapes()``, 224 and 512)
x batch 1/8/64 x forward or forward+backward, fp16. Every baseline does its own roll / window partition / bias
gather / seam mask / reverse in PyTorch, since the kernel's point is to fuse them. ``extra_info`` holds ms,
TFLOP/s (attention matmuls only) and the speedups of the fused kernel over eager and compiled eager PyTorch.
Run: ``pytest bench/test_window_attention.py --benchmark-group-by=group``.
"""

from __future__ import annotations

import functools
import importlib.util

import pytest
import torch
import torch.nn.functional as F

from bench.shapes import GPU_BATCHES, window_attention_shapes

if not torch.cuda.is_available():
    pytest.skip("window-attention benchmarks need a CUDA GPU", allow_module_level=True)

from fastmtl.kernels.window_attention import window_attention  # noqa: E402
from fastmtl.layers.swin import (  # noqa: E402
    relative_position_index,
    seam_mask,
    window_attention_ref,
    window_partition,
    window_reverse,
)

DTYPE = torch.float16
PROVIDERS = ["triton", "eager", "compiled", "sdpa", "flex", "xformers"]


def _windows(qkv, window, shift):
    """(B, H, W, 3, heads, d) -> q, k, v each (B, nW * heads, N, d), rolled and partitioned."""
    b, h, w, _, heads, d = qkv.shape
    if shift:
        qkv = torch.roll(qkv, (-shift, -shift), (1, 2))
    win = window_partition(qkv.reshape(b, h, w, -1), window).view(b, -1, window * window, 3, heads, d)
    return win.permute(3, 0, 1, 4, 2, 5).flatten(2, 3).unbind(0)


def _tokens(out, b, h, w, window, shift):
    """(B, nW * heads, N, d) -> (B, H, W, heads * d) at the un-shifted positions."""
    n, d = out.shape[-2:]
    out = out.view(b, -1, out.shape[1] // ((h // window) * (w // window)), n, d).transpose(2, 3)
    out = window_reverse(out.reshape(-1, n, out.shape[-2] * d), window, h, w)
    return torch.roll(out, (shift, shift), (1, 2)) if shift else out


def _bias(table, window, h, w, shift):
    """(nW * heads, N, N) additive bias: relative position bias plus the seam mask."""
    n, heads = window * window, table.shape[1]
    bias = table[relative_position_index(window, table.device).view(-1)].view(n, n, heads).permute(2, 0, 1)
    mask = seam_mask(h, w, window, shift, table.device) if shift else torch.zeros(1, n, n, device=table.device)
    nw = (h // window) * (w // window)
    return (bias[None] + mask[:, None].to(table.dtype)).expand(nw, heads, n, n).reshape(nw * heads, n, n)


def _sdpa(qkv, table, window, shift):
    b, h, w = qkv.shape[:3]
    q, k, v = _windows(qkv, window, shift)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=_bias(table, window, h, w, shift)[None].to(q.dtype))
    return _tokens(out, b, h, w, window, shift)


@functools.cache
def _flex_fn():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, fullgraph=True)


def _flex(qkv, table, window, shift):
    b, h, w = qkv.shape[:3]
    q, k, v = _windows(qkv, window, shift)
    bias = _bias(table, window, h, w, shift)  # (nW * heads, N, N), gathered per score by the score_mod

    def score_mod(score, batch, head, q_idx, kv_idx):
        return score + bias[head, q_idx, kv_idx]

    return _tokens(_flex_fn()(q, k, v, score_mod=score_mod), b, h, w, window, shift)


def _xformers(qkv, table, window, shift):
    import xformers.ops as xops

    b, h, w = qkv.shape[:3]
    q, k, v = (t.transpose(1, 2) for t in _windows(qkv, window, shift))  # (B, N, nW * heads, d)
    n = q.shape[1]
    pad = -n % 8  # xformers wants the bias's last dim 8-aligned in memory; slice back to N
    bias = F.pad(_bias(table, window, h, w, shift), (0, pad))[None, :, :, :n].to(q.dtype)
    out = xops.memory_efficient_attention(q, k, v, attn_bias=bias.expand(b, -1, -1, -1))
    return _tokens(out.transpose(1, 2), b, h, w, window, shift)


def _provider_fn(provider):
    if provider == "xformers" and importlib.util.find_spec("xformers") is None:
        pytest.skip("xformers is not installed")
    return {
        "triton": lambda q, t, w, s: window_attention(q, t, window=w, shift=s),
        "eager": window_attention_ref,
        "compiled": torch.compile(window_attention_ref, fullgraph=True),
        "sdpa": _sdpa,
        "flex": _flex,
        "xformers": _xformers,
    }[provider]


def _step(fn, qkv, table, shape, backward):
    shift = shape.window // 2 if shape.shifted else 0

    def run():
        out = fn(qkv, table, shape.window, shift)
        if backward:
            torch.autograd.grad(out, (qkv, table), torch.ones_like(out))
        torch.cuda.synchronize()

    return run


def _ms(run, reps=10) -> float:
    run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("batch", GPU_BATCHES)
@pytest.mark.parametrize("shape", window_attention_shapes(), ids=lambda s: s.name)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_window_attention(benchmark, provider, shape, batch, mode):
    benchmark.group = f"window_attention-{shape.name}-b{batch}-{mode}"
    gen = torch.Generator(device="cuda").manual_seed(0)
    size = (batch, shape.side, shape.side, 3, shape.heads, shape.head_dim)
    qkv = torch.randn(size, device="cuda", generator=gen).to(DTYPE).requires_grad_()
    table = (0.02 * torch.randn((2 * shape.window - 1) ** 2, shape.heads, device="cuda")).to(DTYPE)
    table.requires_grad_()
    backward = mode == "fwd+bwd"
    run = _step(_provider_fn(provider), qkv, table, shape, backward)
    try:
        benchmark.pedantic(run, rounds=20, iterations=1, warmup_rounds=3)
    except torch.cuda.OutOfMemoryError:
        pytest.skip(f"{provider} runs out of memory at {shape.name} batch {batch}")
    ms = benchmark.stats.stats.mean * 1e3
    n = shape.window**2
    flops = 4 * batch * (shape.side // shape.window) ** 2 * shape.heads * n * n * shape.head_dim
    flops *= 3.5 if backward else 1.0  # backward: five matmuls of the same size as the forward's two
    benchmark.extra_info.update(ms=ms, tflops=flops / ms / 1e9, dtype=str(DTYPE))
    if provider == "triton":
        for baseline in ("eager", "compiled"):
            try:
                base_ms = _ms(_step(_provider_fn(baseline), qkv, table, shape, backward))
            except torch.cuda.OutOfMemoryError:
                continue
            benchmark.extra_info[f"speedup_vs_{baseline}"] = base_ms / ms
