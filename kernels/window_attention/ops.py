"""Launchers, the ``fastmtl::window_attention_*`` ops (forward and backward, fakes, autograd) and the public function.

CUDA tensors run the Triton kernels. CPU tensors run them too when the kernels were built by the Triton
interpreter (``TRITON_INTERPRET=1`` set before this module was imported); otherwise CPU tensors run the fp32
PyTorch reference of ``ref.py`` (:func:`window_attention_fwd_ref`, :func:`window_attention_bwd_ref`).
"""

from __future__ import annotations

import torch
import triton
from torch.library import wrap_triton

from .._utils import dot_precision, interpreted, register_op, runs_kernels
from ..autotune import Tuned
from .kernels import (
    _window_attention_bwd_dbias_kernel,
    _window_attention_bwd_dkdv_kernel,
    _window_attention_bwd_dq_kernel,
    _window_attention_fwd_kernel,
)
from .ref import table_grad, window_attention_bwd_ref, window_attention_fwd_ref

HEAD_DIMS = (16, 32, 64, 128)  # tl.dot needs a power-of-two inner dimension of at least 16
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_PROGRAMS = 1024  # target grid size of the bias-gradient kernel, which sums over window groups
NUM_WARPS = 4


def _blocks(n: int) -> tuple[int, int]:
    """Default (query, key) token tiles for a window of n tokens; smaller only for tiny windows.

    64 x 32 score tiles keep every kernel under ~170 registers per thread without spills on sm_80 and sm_90a
    (64 x 64 tiles need 200-255: the gathered bias tile carries one 64-bit address per element).
    """
    size = triton.next_power_of_2(n)
    return max(16, min(64, size)), max(16, min(32, size))


def configs(n: int) -> list[dict]:
    """Autotuning candidates of all four kernels for a window of n tokens, default first: the default tiles with 3
    and 2 stages and, for windows of 128 tokens or more, a 128-token query tile over 8 warps. All compile without
    spills and with wgmma for sm_90a under triton 3.6 and 3.8 (``tests/kernels/test_window_attention_aot.py``); a
    32-token query tile would fall back to mma.sync (wgmma needs 64 rows per warp group) and spills under 3.8."""
    block_m, block_n = _blocks(n)
    out = [{"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": NUM_WARPS, "num_stages": s} for s in (3, 2)]
    if triton.next_power_of_2(n) >= 128:
        out.append({"BLOCK_M": 128, "BLOCK_N": block_n, "num_warps": 8, "num_stages": 3})
    return out


def candidates(args: dict) -> list[dict]:
    """Candidates of one launch of any of the four kernels (its arguments by name)."""
    return configs(args["WINDOW"] * args["WINDOW"])


def _check(qkv: torch.Tensor, bias_table: torch.Tensor, window: int, shift: int) -> None:
    if qkv.dim() != 6 or qkv.shape[3] != 3:
        raise ValueError(f"qkv must be (B, H, W, 3, heads, d), got shape {tuple(qkv.shape)}")
    if qkv.dtype not in DTYPES:
        raise TypeError(f"qkv dtype {qkv.dtype} is not one of {DTYPES}")
    b, h, w, _, heads, d = qkv.shape
    if window < 1 or h % window or w % window:
        raise ValueError(f"token map {h}x{w} is not a multiple of the window side {window}")
    if not 0 <= shift < window:
        raise ValueError(f"shift must be in [0, window={window}), got {shift}")
    if d not in HEAD_DIMS:
        raise ValueError(f"head dim {d} is not one of {HEAD_DIMS}")
    if bias_table.shape != ((2 * window - 1) ** 2, heads):
        raise ValueError(f"bias_table must be ({(2 * window - 1) ** 2}, {heads}), got {tuple(bias_table.shape)}")
    if bias_table.device != qkv.device:
        raise ValueError(f"bias_table is on {bias_table.device}, qkv on {qkv.device}")


def _kernel_args(qkv: torch.Tensor, bias_table: torch.Tensor, window: int, shift: int) -> tuple:
    """Strides and sizes shared by all four kernels, in their argument order."""
    _, h, w, _, heads, _ = qkv.shape
    return (*qkv.stride(), *bias_table.stride(), h, w, heads, w // window, (h // window) * (w // window))


def _constexprs(dtype: torch.dtype, window: int, head_dim: int, shift: int) -> dict:
    """Compile-time arguments of all four kernels but the tiles (``DOT_PRECISION`` keeps fp32 exact; ignored for
    fp16/bf16)."""
    return dict(WINDOW=window, HEAD_DIM=head_dim, SHIFTED=shift > 0, DOT_PRECISION=dot_precision(dtype))


_KEY = ["WINDOW", "HEAD_DIM", "SHIFTED", "n_heads", "height", "width"]
_ALL = [c for n in (2**i for i in range(1, 13)) for c in configs(n)]
TUNED = {
    name: Tuned(fn, candidates, _ALL, _KEY)
    for name, fn in (
        ("fwd", _window_attention_fwd_kernel),
        ("bwd_dkdv", _window_attention_bwd_dkdv_kernel),
        ("bwd_dq", _window_attention_bwd_dq_kernel),
        ("bwd_dbias", _window_attention_bwd_dbias_kernel),
    )
}


def _launch(name: str, grid, positional: tuple, constexprs: dict, blocks: tuple[int | None, int | None]) -> None:
    """Launches kernel ``name``: autotuned, or with the given (block_m, block_n) tiles and :data:`NUM_WARPS`."""
    tuned = TUNED[name]
    args = dict(zip(tuned.fn.arg_names, positional, strict=False))
    if blocks == (None, None):
        tuned.launch(grid, **args, **constexprs)
        return
    n = constexprs["WINDOW"] ** 2
    block_m, block_n = blocks[0] or _blocks(n)[0], blocks[1] or _blocks(n)[1]
    kernel = tuned.fn if interpreted() else wrap_triton(tuned.fn)  # torch 2.11 wraps no interpreted kernel
    kernel[grid](**args, **constexprs, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=NUM_WARPS)


def forward(
    qkv, bias_table, window: int, shift: int, scale: float, block_m: int | None = None, block_n: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launches the forward kernel: (out (B, H, W, heads*d), lse (B, H, W, heads) fp32, log2 domain).

    Autotuned unless ``block_m`` / ``block_n`` are given (tests use small tiles to span several of them)."""
    b, h, w, _, heads, d = qkv.shape
    n, programs = window * window, b * heads * (h // window) * (w // window)
    out = torch.empty((b, h, w, heads * d), dtype=qkv.dtype, device=qkv.device)
    lse = torch.empty((b, h, w, heads), dtype=torch.float32, device=qkv.device)

    def grid(meta):
        return programs, triton.cdiv(n, meta["BLOCK_M"])

    positional = (qkv, bias_table, out, lse, *_kernel_args(qkv, bias_table, window, shift), shift, scale)
    _launch("fwd", grid, positional, _constexprs(qkv.dtype, window, d, shift), (block_m, block_n))
    return out, lse


def backward(
    dout,
    qkv,
    bias_table,
    out,
    lse,
    window: int,
    shift: int,
    scale: float,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launches the three backward kernels: (dqkv (B, H, W, 3, heads, d) contiguous, dtable like bias_table).

    Autotuned unless ``block_m`` / ``block_n`` are given."""
    b, h, w, _, heads, d = qkv.shape
    n, n_windows = window * window, b * (h // window) * (w // window)
    dout = dout.contiguous()
    delta = (dout.float() * out.float()).view(b, h, w, heads, d).sum(-1)  # (B, H, W, heads) = rowsum(dO * O)
    dqkv = torch.empty((b, h, w, 3, heads, d), dtype=qkv.dtype, device=qkv.device)
    # Window groups of the bias gradient from the default tiles, so the partials' buffer does not depend on the
    # tiles autotuning picks.
    default_m, default_n = _blocks(n)
    groups = max(1, min(n_windows, MAX_PROGRAMS // (triton.cdiv(n, default_m) * triton.cdiv(n, default_n) * heads)))
    dscore = torch.empty((groups, heads, n, n), dtype=torch.float32, device=qkv.device)
    args = (qkv, bias_table, dout, lse, delta)
    sizes = _kernel_args(qkv, bias_table, window, shift)
    const, blocks = _constexprs(qkv.dtype, window, d, shift), (block_m, block_n)

    def grid_dkdv(meta):
        return n_windows * heads, triton.cdiv(n, meta["BLOCK_N"])

    def grid_dq(meta):
        return n_windows * heads, triton.cdiv(n, meta["BLOCK_M"])

    def grid_dbias(meta):
        return triton.cdiv(n, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), heads, groups

    _launch("bwd_dkdv", grid_dkdv, (*args, dqkv, *sizes, shift, scale), const, blocks)
    _launch("bwd_dq", grid_dq, (*args, dqkv, *sizes, shift, scale), const, blocks)
    _launch("bwd_dbias", grid_dbias, (*args, dscore, *sizes, n_windows, shift, scale), const, blocks)
    return dqkv, table_grad(dscore.sum(0), window).to(bias_table.dtype)


def _fwd_impl(
    qkv: torch.Tensor, bias_table: torch.Tensor, window: int, shift: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if runs_kernels(qkv):
        return forward(qkv, bias_table, window, shift, scale)
    return window_attention_fwd_ref(qkv, bias_table, window, shift, scale)


def _fwd_fake(qkv, bias_table, window, shift, scale):
    b, h, w, _, heads, d = qkv.shape
    return qkv.new_empty((b, h, w, heads * d)), qkv.new_empty((b, h, w, heads), dtype=torch.float32)


def _bwd_impl(
    dout: torch.Tensor,
    qkv: torch.Tensor,
    bias_table: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    window: int,
    shift: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    if runs_kernels(qkv):
        return backward(dout, qkv, bias_table, out, lse, window, shift, scale)
    return window_attention_bwd_ref(dout, qkv, bias_table, window, shift, scale)


def _bwd_fake(dout, qkv, bias_table, out, lse, window, shift, scale):
    return qkv.new_empty(qkv.shape), torch.empty_like(bias_table)


_fwd_op = register_op("fastmtl::window_attention_fwd", _fwd_impl, _fwd_fake)
_bwd_op = register_op("fastmtl::window_attention_bwd", _bwd_impl, _bwd_fake)


def _setup_context(ctx, inputs, output) -> None:
    qkv, bias_table, ctx.window, ctx.shift, ctx.scale = inputs
    out, lse = output
    ctx.save_for_backward(qkv, bias_table, out, lse)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    qkv, bias_table, out, lse = ctx.saved_tensors
    dqkv, dtable = torch.ops.fastmtl.window_attention_bwd(
        dout, qkv, bias_table, out, lse, ctx.window, ctx.shift, ctx.scale
    )
    return dqkv, dtable, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def window_attention(
    qkv: torch.Tensor, bias_table: torch.Tensor, *, window: int, shift: int, scale: float | None = None
) -> torch.Tensor:
    """Fused (shifted-)window multi-head attention with relative position bias; see ``window_attention_ref``.

    Args:
        qkv: (B, H, W, 3, heads, d) fused qkv projection output, any strides; H, W multiples of ``window``;
            d in 16/32/64/128; fp32, fp16 or bf16.
        bias_table: ((2w-1)^2, heads) relative position bias table (any float dtype; read in fp32).
        window: window side w (w = H = W is one global window).
        shift: cyclic shift in [0, w); seams of the rolled map are masked with -100.
        scale: softmax scale, default d^-0.5.

    Returns:
        (B, H, W, heads * d) in qkv's dtype, at the un-shifted positions.
    """
    _check(qkv, bias_table, window, shift)
    scale = qkv.shape[-1] ** -0.5 if scale is None else float(scale)
    return torch.ops.fastmtl.window_attention_fwd(qkv, bias_table, window, shift, scale)[0]
