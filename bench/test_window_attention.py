"""Fused window attention vs eager Swin, compiled eager, SDPA, FlexAttention and xformers.

One timed callable per test (the shared ``measure`` fixture): ``provider`` x stage shape
(the model's ``fastmtl.models.launches.window_attention_shapes()``, 224 and 512) x batch 1/8/64 x forward or
forward+backward, bf16. With
``--bench-suite`` only batch 64 forward+backward, the goal's case. Every baseline does its own roll / window
partition / bias gather / seam mask / reverse in PyTorch, since the kernel's point is to fuse them, each at its
best configuration: FlexAttention (:func:`flex_peer`) with its bias built once outside the timed region for the
forward (inside the compiled graph for forward+backward, where the table is trained) and the whole function
compiled. ``extra_info``
holds ms and TFLOP/s (attention matmuls only); the session adds the speedups over eager and compiled eager.
On CPU only ``--bench-quick`` runs (one tiny fp32 stage, eager / SDPA, and the kernel through the interpreter when
``TRITON_INTERPRET=1``). Run: ``pytest bench/test_window_attention.py --benchmark-group-by=group``.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

from bench.cases import CPU_COMPILE_REASON
from bench.record import record_group
from bench.shapes import GPU_BATCHES, SUITE_BATCH
from fastmtl.kernels.window_attention import window_attention
from fastmtl.layers.swin import (
    relative_position_index,
    seam_mask,
    window_attention_ref,
    window_partition,
    window_reverse,
)
from fastmtl.models.launches import WindowAttentionShape, window_attention_shapes

PROVIDERS = ["triton", "eager", "flex", "sdpa", "compiled", "xformers"]  # most important first
QUICK_SHAPE = WindowAttentionShape(img_size=32, stage=0, side=8, window=4, heads=2, head_dim=16)
_COMPILED = frozenset({"compiled", "flex"})
KERNELS = {"triton": "triton", "eager": "reference", "compiled": "reference"}  # fastmtl's kernels per provider


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


def flex_peer(table: torch.Tensor, side: int, window: int, shift: int, backward: bool):
    """FlexAttention at its best configuration, what a good user would write. Forward (inference: the table is
    frozen): the (nW * heads, N, N) bias with the seam mask is built once here, outside the timed region. Forward +
    backward: the bias is a function of the table being trained, so it is built inside the compiled graph, where
    Inductor fuses the gather and scatters its gradient back into the table (dense per-(window, head) bias grads;
    gathering from the small table inside the score_mod instead would funnel every program's atomics into a few
    hundred entries). Either way roll + partition + ``flex_attention`` + reverse are one ``torch.compile(fullgraph=
    True)`` graph. No block mask: every partitioned window is dense, so a BlockMask would skip nothing. Returns
    fn(qkv, table, window, shift) like the other providers."""
    from torch.nn.attention.flex_attention import flex_attention

    with torch.no_grad():
        fixed = None if backward else _bias(table, window, side, side, shift)  # (nW * heads, N, N), once

    def run(qkv, table_, window_, shift_):
        b, h, w = qkv.shape[:3]
        q, k, v = _windows(qkv, window, shift)
        bias = _bias(table_, window, h, w, shift).to(q.dtype) if fixed is None else fixed.to(q.dtype)

        def score_mod(score, batch, head, q_idx, kv_idx):
            return score + bias[head, q_idx, kv_idx]

        return _tokens(flex_attention(q, k, v, score_mod=score_mod), b, h, w, window, shift)

    if table.device.type == "cpu":  # dry runs only: see _flex_on_cpu
        return _flex_on_cpu(fixed, window, shift)
    return torch.compile(run, fullgraph=True)


def _flex_on_cpu(bias, window, shift):
    """The dry run's FlexAttention (forward only: it has no CPU backward): the compiled ``flex_attention`` on q, k,
    v copied apart in eager, since torch 2.11's CPU lowering refuses q, k, v that are views of one buffer (and
    Inductor folds copies made inside the graph)."""
    from torch.nn.attention.flex_attention import flex_attention

    compiled = torch.compile(flex_attention, fullgraph=True)

    def score_mod(score, batch, head, q_idx, kv_idx):
        return score + bias[head, q_idx, kv_idx]

    def run(qkv, table_, window_, shift_):
        b, h, w = qkv.shape[:3]
        q, k, v = (t.clone() for t in _windows(qkv, window, shift))
        return _tokens(compiled(q, k, v, score_mod=score_mod), b, h, w, window, shift)

    return run


def _xformers(qkv, table, window, shift):
    import xformers.ops as xops

    b, h, w = qkv.shape[:3]
    q, k, v = (t.transpose(1, 2) for t in _windows(qkv, window, shift))  # (B, N, nW * heads, d)
    n = q.shape[1]
    pad = -n % 8  # xformers wants the bias's last dim 8-aligned in memory; slice back to N
    bias = F.pad(_bias(table, window, h, w, shift), (0, pad))[None, :, :, :n].to(q.dtype)
    out = xops.memory_efficient_attention(q, k, v, attn_bias=bias.expand(b, -1, -1, -1))
    return _tokens(out.transpose(1, 2), b, h, w, window, shift)


def _skip_reason(provider: str, device: torch.device, quick: bool, cpu_compile: bool) -> str | None:
    if provider == "xformers" and importlib.util.find_spec("xformers") is None:
        return "xformers is not installed"
    if device.type == "cuda":
        return None
    if not quick:
        return "window-attention benchmarks time CUDA kernels; on CPU only the --bench-quick smoke runs"
    if provider == "xformers":
        return "xformers runs on CUDA only"
    if provider == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        return "the Triton provider needs CUDA or TRITON_INTERPRET=1"
    if provider in _COMPILED and not cpu_compile:
        return CPU_COMPILE_REASON
    return None


def _provider_fn(provider):
    return {
        "triton": lambda q, t, w, s: window_attention(q, t, window=w, shift=s),
        "eager": window_attention_ref,
        "compiled": torch.compile(window_attention_ref, fullgraph=True),
        "sdpa": _sdpa,
        "xformers": _xformers,
    }[provider]


def _params(quick: bool, suite: bool) -> list:
    if quick:
        return [pytest.param(QUICK_SHAPE, 2, mode, id=f"{QUICK_SHAPE.name}-b2-{mode}") for mode in ("fwd", "fwd+bwd")]
    modes, batches = (("fwd+bwd",), (SUITE_BATCH,)) if suite else (("fwd", "fwd+bwd"), GPU_BATCHES)
    return [
        pytest.param(s, b, m, id=f"{s.name}-b{b}-{m}")
        for s in window_attention_shapes()
        for b in batches
        for m in modes
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "shape" in metafunc.fixturenames:
        quick, suite = metafunc.config.getoption("bench_quick"), metafunc.config.getoption("bench_suite")
        metafunc.parametrize(("shape", "batch", "mode"), _params(bool(quick), bool(suite)))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_window_attention(provider, shape, batch, mode, measure, bench_device, bench_quick, bench_cpu_compile,
                          request):  # fmt: skip
    group = f"window_attention-{shape.name}-b{batch}-{mode}"
    record_group(request.node, group)
    reason = _skip_reason(provider, bench_device, bench_quick, bench_cpu_compile)
    if not reason and provider == "flex" and mode == "fwd+bwd" and bench_device.type == "cpu":
        reason = "FlexAttention has no backward on CPU"
    if reason:
        pytest.skip(reason)
    dtype = torch.bfloat16 if bench_device.type == "cuda" else torch.float32
    gen = torch.Generator(device=bench_device).manual_seed(0)
    size = (batch, shape.side, shape.side, 3, shape.heads, shape.head_dim)
    backward = mode == "fwd+bwd"  # a forward benchmark tracks no gradients
    qkv = torch.randn(size, device=bench_device, generator=gen).to(dtype).requires_grad_(backward)
    table = 0.02 * torch.randn((2 * shape.window - 1) ** 2, shape.heads, device=bench_device, generator=gen)
    table = table.to(dtype).requires_grad_(backward)
    shift = shape.window // 2 if shape.shifted else 0
    if provider == "flex":
        fn = flex_peer(table, shape.side, shape.window, shift, backward)
    else:
        fn = _provider_fn(provider)

    if provider != "eager":  # a peer is timed only once it computes what the reference computes
        with torch.no_grad():
            got, want = fn(qkv, table, shape.window, shift), window_attention_ref(qkv, table, shape.window, shift)
        tol = 3e-2 if dtype == torch.bfloat16 else 1e-4
        torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol, msg=f"{provider} != the reference")

    def run() -> None:
        out = fn(qkv, table, shape.window, shift)
        if backward:
            torch.autograd.grad(out, (qkv, table), torch.ones_like(out))

    n = shape.window**2
    flops = 4 * batch * (shape.side // shape.window) ** 2 * shape.heads * n * n * shape.head_dim
    flops *= 3.5 if backward else 1.0  # backward: five matmuls of the same size as the forward's two
    measure(run, group=group, provider=provider, items=batch, kernels=KERNELS.get(provider, "none"),
            flops=flops, compiled=provider in _COMPILED, mode=mode, batch=batch,
            dtype=str(dtype).split(".")[-1], img_size=shape.img_size, stage=shape.stage)  # fmt: skip
