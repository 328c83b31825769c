"""Ahead-of-time compilation of the window-attention kernels for a GPU target; no GPU needed (Triton ships ptxas).

Used by the GPU-readiness test and the benchmark report: every kernel variant the model launches compiles for
sm_90a and sm_80 through :func:`fastmtl.kernels.aot_compile.compile_kernel`, which reports registers, spills, shared
memory and tensor-core use. The arguments are those of a real launch, built from meta tensors. Must run in a
process where the kernels are JIT functions (``TRITON_INTERPRET`` unset when this package was imported).
"""

from __future__ import annotations

import torch

from ..aot_compile import compile_kernel
from ..autotune import split
from . import kernels as tk
from .ops import _constexprs, _kernel_args, configs

KERNELS = {
    "fwd": tk._window_attention_fwd_kernel,
    "bwd_dkdv": tk._window_attention_bwd_dkdv_kernel,
    "bwd_dq": tk._window_attention_bwd_dq_kernel,
    "bwd_dbias": tk._window_attention_bwd_dbias_kernel,
}


def launch_args(kernel: str, shape, dtype: torch.dtype, shifted: bool, batch: int = 1) -> tuple[dict, dict]:
    """(arguments by name, constexprs but the tiles) of ``kernel`` launched for one
    ``fastmtl.models.launches.WindowAttentionShape``."""
    window, heads, d = shape.window, shape.heads, shape.head_dim
    shift = window // 2 if shifted else 0
    n = window * window
    meta = dict(device="meta", dtype=dtype)
    qkv = torch.empty(batch, shape.side, shape.side, 3, heads, d, **meta)
    table = torch.empty((2 * window - 1) ** 2, heads, device="meta")
    stats = torch.empty(batch, shape.side, shape.side, heads, device="meta")  # lse and delta, fp32
    tokens = torch.empty(batch, shape.side, shape.side, heads * d, **meta)  # out and dout
    sizes = _kernel_args(qkv, table, window, shift)
    tail = (shift, d**-0.5)
    if kernel == "fwd":
        positional = (qkv, table, tokens, stats, *sizes, *tail)
    elif kernel == "bwd_dbias":
        dscore = torch.empty(1, heads, n, n, device="meta")
        n_windows = batch * (shape.side // window) ** 2
        positional = (qkv, table, tokens, stats, stats, dscore, *sizes, n_windows, *tail)
    else:
        positional = (qkv, table, tokens, stats, stats, torch.empty_like(qkv), *sizes, *tail)
    args = dict(zip(KERNELS[kernel].arg_names, positional, strict=False))
    return args, _constexprs(dtype, window, d, shift)


def variants(shapes, dtypes=(torch.float16, torch.bfloat16)) -> list[tuple[str, object, torch.dtype, bool]]:
    """(kernel, shape, dtype, shifted) for every kernel the ``shapes`` launch, forward and backward.

    ``shapes`` is ``fastmtl.models.launches.window_attention_shapes()``; a stage whose map is one window runs
    unshifted only.
    """
    return [
        (kernel, shape, dtype, shifted)
        for shape in shapes
        for shifted in sorted({False, shape.shifted})
        for dtype in dtypes
        for kernel in KERNELS
    ]


def candidates(shape) -> list[dict]:
    """Autotuning candidates (config dicts, default first) of every kernel at ``shape``."""
    return configs(shape.window**2)


def kernel_resources(
    kernel: str, shape, dtype: torch.dtype, shifted: bool, capability: int = 90, candidate: int = 0
) -> dict:
    """Registers, spills, shared memory, tensor-core use and PTX load / MMA counts of one launch with autotuning
    candidate ``candidate`` (0: the default) compiled for ``sm_<capability>``."""
    args, constexprs = launch_args(kernel, shape, dtype, shifted)
    tiles, options = split(candidates(shape)[candidate])
    info = compile_kernel(KERNELS[kernel], args, {**constexprs, **tiles}, options, capability)
    return {**tiles, **options, **info}
