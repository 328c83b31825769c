"""Launchers, the ``fastmtl::window_attention_*`` ops (forward and backward) and the public function.

CUDA tensors run the Triton kernels. CPU tensors run them too when the kernels were built by the Triton
interpreter (``TRITON_INTERPRET=1`` set before this module was imported); otherwise CPU tensors run the pure
PyTorch path below, the same math as :func:`fastmtl.layers.swin.window_attention_ref`.
"""

from __future__ import annotations

import torch
import triton
from torch.library import triton_op, wrap_triton

from fastmtl.layers.swin import relative_position_index, seam_mask, window_partition, window_reverse

from ..autotune import Tuned
from .triton_kernels import (
    LOG2E,
    _window_attention_bwd_dbias_kernel,
    _window_attention_bwd_dkdv_kernel,
    _window_attention_bwd_dq_kernel,
    _window_attention_fwd_kernel,
)

HEAD_DIMS = (16, 32, 64, 128)  # tl.dot needs a power-of-two inner dimension of at least 16
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_PROGRAMS = 1024  # target grid size of the bias-gradient kernel, which sums over window groups
NUM_WARPS = 4


def _interpreted() -> bool:
    """Whether the kernels were built by the Triton interpreter (and so run on CPU tensors)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_window_attention_fwd_kernel, InterpretedFunction)


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
    precision = "ieee" if dtype == torch.float32 else "tf32"
    return dict(WINDOW=window, HEAD_DIM=head_dim, SHIFTED=shift > 0, DOT_PRECISION=precision)


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
    kernel = tuned.fn if _interpreted() else wrap_triton(tuned.fn)  # torch 2.11 wraps no interpreted kernel
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


def _diagonal_sums(x: torch.Tensor) -> torch.Tensor:
    """(..., w, w) -> (..., 2w-1): entry i - j + w - 1 sums x[..., i, j] (skew the rows by padding, no scatter)."""
    w = x.shape[-1]
    skewed = torch.nn.functional.pad(x.flip(-1), (0, w)).flatten(-2)[..., : w * (2 * w - 1)]
    return skewed.unflatten(-1, (w, 2 * w - 1)).sum(-2)


def table_grad(dscore: torch.Tensor, window: int) -> torch.Tensor:
    """(heads, N, N) score gradient summed over windows -> ((2w-1)^2, heads) bias-table gradient, deterministic.

    Entry (dr, dc) of the table collects the pairs with row offset dr and column offset dc, so the sum splits into
    diagonal sums over the column pair, then over the row pair.
    """
    heads = dscore.shape[0]
    x = dscore.view(heads, window, window, window, window).permute(0, 1, 3, 2, 4)  # (heads, ri, rj, ci, cj)
    x = _diagonal_sums(x).permute(0, 3, 1, 2)  # (heads, dc, ri, rj)
    return _diagonal_sums(x).permute(2, 1, 0).reshape(-1, heads)  # (dr, dc, heads) -> ((2w-1)^2, heads)


def _to_windows(x: torch.Tensor, window: int, shift: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, N, C) windows of the map rolled by -shift."""
    return window_partition(torch.roll(x, (-shift, -shift), (1, 2)) if shift else x, window)


def _to_tokens(x: torch.Tensor, window: int, height: int, width: int, shift: int) -> torch.Tensor:
    """(B * nW, N, C) -> (B, H, W, C) at the un-shifted positions; the inverse of :func:`_to_windows`."""
    x = window_reverse(x, window, height, width)
    return torch.roll(x, (shift, shift), (1, 2)) if shift else x


def _logits_ref(qkv, bias_table, window: int, shift: int, scale: float):
    """q, k, v (B * nW, heads, N, d) and logits (B * nW, heads, N, N) with bias and seam mask, all in fp32."""
    b, h, w, _, heads, d = qkv.shape
    n = window * window
    win = _to_windows(qkv.reshape(b, h, w, -1), window, shift).view(-1, n, 3, heads, d)
    q, k, v = win.permute(2, 0, 3, 1, 4).float().unbind(0)
    index = relative_position_index(window, qkv.device).view(-1)
    logits = (q * scale) @ k.transpose(-2, -1) + bias_table.float()[index].view(n, n, heads).permute(2, 0, 1)
    if shift:
        mask = seam_mask(h, w, window, shift, qkv.device)[None, :, None]  # (1, nW, 1, N, N)
        logits = (logits.view(b, -1, heads, n, n) + mask).view(-1, heads, n, n)
    return q, k, v, logits


def _forward_ref(qkv, bias_table, window: int, shift: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's PyTorch path: the kernel's outputs (out, log2-domain lse) from fp32 math."""
    b, h, w, _, heads, d = qkv.shape
    _, _, v, logits = _logits_ref(qkv, bias_table, window, shift, scale)
    out = (logits.softmax(-1) @ v).transpose(1, 2).flatten(2)  # (B * nW, N, heads * d)
    lse = (logits.logsumexp(-1) * LOG2E).transpose(1, 2)  # (B * nW, N, heads)
    return _to_tokens(out, window, h, w, shift).to(qkv.dtype), _to_tokens(lse, window, h, w, shift).contiguous()


def _backward_ref(dout, qkv, bias_table, window: int, shift: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's PyTorch backward (analytic softmax-attention gradients; the table gradient via :func:`table_grad`)."""
    b, h, w, _, heads, d = qkv.shape
    q, k, v, logits = _logits_ref(qkv, bias_table, window, shift, scale)
    p = logits.softmax(-1)
    do = _to_windows(dout.float(), window, shift).unflatten(-1, (heads, d)).transpose(1, 2)  # (B*nW, heads, N, d)
    dp = do @ v.transpose(-2, -1)
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    grads = (ds @ k * scale, ds.transpose(-2, -1) @ q * scale, p.transpose(-2, -1) @ do)
    dwin = torch.stack(grads, 2).permute(0, 3, 2, 1, 4).flatten(2)  # (B * nW, N, 3 * heads * d)
    dqkv = _to_tokens(dwin, window, h, w, shift).view(qkv.shape).to(qkv.dtype)
    return dqkv, table_grad(ds.sum(0), window).to(bias_table.dtype)


def _runs_kernel(qkv: torch.Tensor) -> bool:
    return qkv.is_cuda or _interpreted()


def _fwd_impl(
    qkv: torch.Tensor, bias_table: torch.Tensor, window: int, shift: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if _runs_kernel(qkv):
        return forward(qkv, bias_table, window, shift, scale)
    return _forward_ref(qkv, bias_table, window, shift, scale)


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
    if _runs_kernel(qkv):
        return backward(dout, qkv, bias_table, out, lse, window, shift, scale)
    return _backward_ref(dout, qkv, bias_table, window, shift, scale)


def _bwd_fake(dout, qkv, bias_table, out, lse, window, shift, scale):
    return qkv.new_empty(qkv.shape), torch.empty_like(bias_table)


def _define(name: str, impl, fake):
    """``triton_op`` so Inductor sees the kernels; an opaque ``custom_op`` under the interpreter, whose kernels
    run eagerly on CPU tensors but cannot be traced into a graph."""
    define = torch.library.custom_op if _interpreted() else triton_op
    op = define(name, impl, mutates_args=())
    op.register_fake(fake)  # shapes only; never launches a kernel on fake tensors
    return op


_fwd_op = _define("fastmtl::window_attention_fwd", _fwd_impl, _fwd_fake)
_bwd_op = _define("fastmtl::window_attention_bwd", _bwd_impl, _bwd_fake)


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
