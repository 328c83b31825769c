"""DFE ops: launch plans, ``torch.library`` registration and analytic autograd. Tensors in, tensors out.

Weight layout of the ops is the kernels' ``(taps, C_in, C_out)`` (:func:`~.ref.taps_from_conv_weight`); the DFE
layers (``fastmtl.layers.dfe``) gather their weights, fold their BNs and call these ops. With compiled kernels the
fake implementation of each op is the op function itself, which ``triton_op`` traces under FakeTensorMode
(``wrap_triton`` launches nothing there). The references are in ``ref.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton

from .._utils import dot_precision, interpreted, register_op, runs_kernels
from ..autotune import Tuned, split
from .backward import branches_backward, branches_setup, merge_backward, merge_setup, sa_backward, sa_setup
from .kernels import _dfe_branches_kernel, _dfe_merge_kernel, _sa_gate_kernel, _sa_pool_kernel
from .ref import (
    dfe_branches_ref,
    dfe_merge_ref,
    spatial_attention_ref,
)

MAX_BRANCHES = 8  # rates travel packed 8 bits each in one integer kernel argument
MAX_RATE = 255


def _register(name: str, fake):
    """Decorator form of :func:`fastmtl.kernels._utils.register_op` (the op function doubles as its fake when
    compiled; ``fake`` serves the interpreter)."""
    return lambda fn: register_op(name, fn, fake if interpreted() else None)


# ------------------------------------------------------------------------------------------------------ launch plans
def conv_configs(c_in: int, c_out: int, dtype: torch.dtype) -> list[dict]:
    """Autotuning candidates of the implicit-GEMM kernels, default first: 16-bit tiles feed tensor cores, fp32
    tiles stay small (IEEE fp32 runs on the CUDA cores, and the tile of 64-bit input pointers bounds its size).

    Every candidate of every launch the model makes compiles without register spills on sm_90a (the AOT report,
    ``kernels/dfe/aot.py``, and ``tests/kernels/test_dfe_aot.py``); the defaults also on sm_80.
    """
    out = []
    for params in _conv_configs(c_in, c_out, dtype):  # small channel counts make some candidates coincide
        if params not in out:
            out.append(params)
    return out


def _conv_configs(c_in: int, c_out: int, dtype: torch.dtype) -> list[dict]:
    np2 = triton.next_power_of_2

    def cfg(block_m, block_n, block_k, warps, stages):
        return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": warps, "num_stages": stages}

    if dtype == torch.float32:
        # Small tiles: the only ones found without spills under both triton 3.6 (ptxas 12.8) and 3.8 (ptxas 12.9
        # with --regAllocOptLevel=2). Either ptxas spills 4-170 bytes somewhere for 64 x 64 tiles over 2, 4 or 8
        # warps, 32 x 64 tiles, or 32 x 32 x 32 tiles, often at 80-96 registers of a possible 255. The default
        # (first, 16 x 64 x 16) is also spill-free for sm_80, where both spill 4-20 bytes of some other small tiles.
        block_n, block_k = min(64, max(16, np2(c_out))), min(32, max(16, np2(c_in)))
        small_n = min(32, block_n)
        out = [cfg(16, block_n, 16, 4, 1), cfg(16, block_n, block_k, 4, 1), cfg(32, small_n, 16, 4, 1)]
        # At 16 channels or fewer (no DFE level of the model) a 64 x 16 tile holds few registers: fewer programs.
        return [cfg(64, 16, 16, 4, 1), *out] if block_n == block_k == 16 else out
    if c_out >= 128:
        # 64-wide K steps spill under triton 3.8 (128 x 128 over 8 warps: 8 bytes in the merge; 64 x 128 over 4
        # warps: 44-120 bytes), so the candidates vary the M tile and the pipeline depth.
        k32 = min(32, max(16, np2(c_in)))
        return [cfg(128, 128, k32, 8, 3), cfg(128, 128, k32, 8, 4), cfg(64, 128, k32, 4, 3)]
    block_n, k64, k32 = max(16, np2(c_out)), min(64, max(16, np2(c_in))), min(32, max(16, np2(c_in)))
    return [cfg(64, block_n, k64, 4, 3), cfg(128, block_n, k64, 8, 3), cfg(64, block_n, k32, 4, 4)]


def conv_config(c_in: int, c_out: int, dtype: torch.dtype) -> dict:
    """The default (first) candidate of :func:`conv_configs`: what the interpreter runs."""
    return conv_configs(c_in, c_out, dtype)[0]


def sa_configs() -> list[dict]:
    """Autotuning candidates of the two spatial-attention kernels (memory bound), default first."""
    return [{"BLOCK_M": 64, "BLOCK_C": 32, "num_warps": 4, "num_stages": 3},
            {"BLOCK_M": 128, "BLOCK_C": 32, "num_warps": 8, "num_stages": 3},
            {"BLOCK_M": 32, "BLOCK_C": 64, "num_warps": 4, "num_stages": 3}]  # fmt: skip


def branches_candidates(args: dict) -> list[dict]:
    """Candidates of one ``_dfe_branches_kernel`` launch (its arguments by name)."""
    return conv_configs(args["c_in"], args["c_out"], args["x_ptr"].dtype)


def merge_candidates(args: dict) -> list[dict]:
    """Candidates of one ``_dfe_merge_kernel`` launch (its arguments by name)."""
    return conv_configs(args["c_cat"], args["c_out"], args["cat_ptr"].dtype)


_POW2 = [2**i for i in range(11)]  # every channel count maps onto one of these in conv_configs
_ALL_CONV = [c for dt in (torch.float32, torch.float16) for i in _POW2 for o in _POW2 for c in conv_configs(i, o, dt)]
BRANCHES = Tuned(_dfe_branches_kernel, branches_candidates, _ALL_CONV,
                 key=["c_in", "c_out", "height", "width", "n_branches", "stride_xc", "SUM_BRANCHES"])  # fmt: skip
MERGE = Tuned(_dfe_merge_kernel, merge_candidates, _ALL_CONV,
              key=["c_cat", "c_in", "c_out", "height", "width", "stride_cc", "HAS_SHORTCUT"])  # fmt: skip
SA_POOL = Tuned(
    _sa_pool_kernel, lambda args: sa_configs(), sa_configs(), key=["channels", "height", "width", "stride_xc"]
)
SA_GATE = Tuned(
    _sa_gate_kernel, lambda args: sa_configs(), sa_configs(), key=["channels", "height", "width", "stride_xc"]
)


def _strides(t: torch.Tensor, prefix: str) -> dict:
    return dict(zip([f"stride_{prefix}{d}" for d in "bchw"], t.stride(), strict=True))


def branches_plan(x, weight, bias, out, counts, rates, sum_branches, relu):
    """Grid (a function of the config), arguments and constexprs (the tuned ones excluded) of one
    ``_dfe_branches_kernel`` launch; meta tensors are fine."""
    nb, n_taps, c_in, c_out = weight.shape
    batch, n_pix, per_tile = x.shape[0], x.shape[2] * x.shape[3], 1 if sum_branches else nb

    def grid(meta):
        return batch * triton.cdiv(n_pix, meta["BLOCK_M"]) * per_tile, triton.cdiv(c_out, meta["BLOCK_N"])

    args = {"x_ptr": x, "w_ptr": weight, "bias_ptr": out if bias is None else bias, "out_ptr": out,
            "count_ptr": out if counts is None else counts, "c_in": c_in, "c_out": c_out, "height": x.shape[2],
            "width": x.shape[3], "n_branches": nb, "rates_packed": sum(r << (8 * i) for i, r in enumerate(rates)),
            **_strides(x, "x"), "stride_wb": n_taps * c_in * c_out, "stride_wt": c_in * c_out,
            **_strides(out, "o")}  # fmt: skip
    const = {"SUM_BRANCHES": sum_branches, "HAS_BIAS": bias is not None, "RELU": relu,
             "COUNT_TAPS": counts is not None, "DOT_PRECISION": dot_precision(x.dtype)}  # fmt: skip
    return grid, args, const


def merge_plan(cat, x, weight, shortcut, bias, out, relu):
    """Grid (a function of the config), arguments and constexprs (the tuned ones excluded) of one
    ``_dfe_merge_kernel`` launch; meta tensors are fine."""
    _, c_cat, c_out = weight.shape
    batch, n_pix = cat.shape[0], cat.shape[2] * cat.shape[3]

    def grid(meta):
        return batch * triton.cdiv(n_pix, meta["BLOCK_M"]), triton.cdiv(c_out, meta["BLOCK_N"])

    args = {"cat_ptr": cat, "x_ptr": x, "w_ptr": weight, "ws_ptr": weight if shortcut is None else shortcut,
            "bias_ptr": out if bias is None else bias, "out_ptr": out, "c_cat": c_cat, "c_in": x.shape[1],
            "c_out": c_out, "height": cat.shape[2], "width": cat.shape[3], **_strides(cat, "c"), **_strides(x, "x"),
            **_strides(out, "o")}  # fmt: skip
    const = {"HAS_SHORTCUT": shortcut is not None, "HAS_BIAS": bias is not None, "RELU": relu,
             "DOT_PRECISION": dot_precision(cat.dtype)}  # fmt: skip
    return grid, args, const


def sa_plans(x, weight, pooled, out):
    """Grid, arguments and constexprs (the tuned ones excluded) of the two spatial-attention launches (pool, gate)."""
    batch, n_pix = x.shape[0], x.shape[2] * x.shape[3]

    def grid(meta):
        return (batch * triton.cdiv(n_pix, meta["BLOCK_M"]),)

    shape = {"channels": x.shape[1], "height": x.shape[2], "width": x.shape[3], **_strides(x, "x")}
    pool = (grid, {"x_ptr": x, "pooled_ptr": pooled, **shape}, {})
    gate_args = {"x_ptr": x, "pooled_ptr": pooled, "w_ptr": weight, "out_ptr": out, **shape, **_strides(out, "o")}
    return pool, (grid, gate_args, {"KSIZE": weight.shape[-1]})


# ------------------------------------------------------------------------------------------------------- validation
def _check_branches(x, weight, bias, rates, sum_branches):
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(
            f"expected x (B,C,H,W) and weight (NB,T,C_in,C_out), got {tuple(x.shape)}, {tuple(weight.shape)}"
        )
    nb, n_taps, c_in, c_out = weight.shape
    if c_in != x.shape[1] or len(rates) != nb or not 1 <= nb <= MAX_BRANCHES:
        raise ValueError(f"weight {tuple(weight.shape)} does not fit x {tuple(x.shape)} and rates {list(rates)}")
    if any(not 0 <= r <= MAX_RATE for r in rates) or n_taps not in ((9,) if any(rates) else (1, 9)):
        raise ValueError(
            f"rates must lie in [0, {MAX_RATE}] with 9 taps when any is > 0, got {list(rates)}, T={n_taps}"
        )
    if weight.dtype != x.dtype:
        raise TypeError(f"weight dtype {weight.dtype} differs from x dtype {x.dtype}")
    n_bias = c_out if sum_branches else nb * c_out
    if bias is not None and bias.shape != (n_bias,):
        raise ValueError(f"bias must have shape ({n_bias},), got {tuple(bias.shape)}")


def _out_like(x: torch.Tensor, channels: int, dtype=None) -> torch.Tensor:
    fmt = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else None
    shape = (x.shape[0], channels, *x.shape[2:])
    out = torch.empty(shape, dtype=dtype or x.dtype, device=x.device)
    return out.contiguous(memory_format=fmt) if fmt is not None and x.shape[1] > 1 else out


# ---------------------------------------------------------------------------------------------------------------- ops
def _branches_fake(x, weight, bias, rates, sum_branches, relu):
    _check_branches(x, weight, bias, rates, sum_branches)
    return _out_like(x, weight.shape[-1] * (1 if sum_branches else weight.shape[0]))


def _merge_fake(cat, x, weight, shortcut, bias, relu):
    return _out_like(cat, weight.shape[-1])


@_register("fastmtl::dfe_branches", _branches_fake)
def _dfe_branches_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rates: list[int], sum_branches: bool, relu: bool
) -> torch.Tensor:
    """The op behind :func:`dfe_branches` (its schema is positional)."""
    _check_branches(x, weight, bias, rates, sum_branches)
    if not runs_kernels(x):
        return dfe_branches_ref(x, weight, bias, rates, sum_branches, relu)
    out = _out_like(x, weight.shape[-1] * (1 if sum_branches else weight.shape[0]))
    grid, args, const = branches_plan(x, weight.contiguous(), bias, out, None, rates, sum_branches, relu)
    BRANCHES.launch(grid, **args, **const)
    return out


@_register("fastmtl::dfe_merge", _merge_fake)
def _dfe_merge_op(
    cat: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    shortcut: torch.Tensor | None,
    bias: torch.Tensor | None,
    relu: bool,
) -> torch.Tensor:
    """The op behind :func:`dfe_merge` (its schema is positional)."""
    if weight.shape[:2] != (9, cat.shape[1]) or (shortcut is not None and shortcut.shape[1] != x.shape[1]):
        raise ValueError(f"merge weight {tuple(weight.shape)} / shortcut does not fit cat {tuple(cat.shape)}")
    if weight.dtype != cat.dtype or x.dtype != cat.dtype:
        raise TypeError(f"dtypes differ: cat {cat.dtype}, x {x.dtype}, weight {weight.dtype}")
    if not runs_kernels(cat):
        return dfe_merge_ref(cat, x, weight, shortcut, bias, relu)
    out = _out_like(cat, weight.shape[-1])
    sc = None if shortcut is None else shortcut.contiguous()
    grid, args, const = merge_plan(cat, x, weight.contiguous(), sc, bias, out, relu)
    MERGE.launch(grid, **args, **const)
    return out


@_register("fastmtl::spatial_attention", lambda x, weight: torch.empty_like(x))
def spatial_attention(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(conv_kxk([mean_c x, max_c x]))``; weight (1, 2, k, k), k odd. Pools in fp32."""
    if weight.dim() != 4 or weight.shape[:2] != (1, 2) or weight.shape[-1] % 2 != 1:
        raise ValueError(f"spatial attention weight must be (1, 2, k, k) with k odd, got {tuple(weight.shape)}")
    if not runs_kernels(x):
        return spatial_attention_ref(x, weight)
    pooled = torch.empty((x.shape[0], 2, x.shape[2] * x.shape[3]), dtype=torch.float32, device=x.device)
    out = torch.empty_like(x)
    (g1, a1, c1), (g2, a2, c2) = sa_plans(x, weight.contiguous(), pooled, out)
    SA_POOL.launch(g1, **a1, **c1)
    SA_GATE.launch(g2, **a2, **c2)
    return out


# ---------------------------------------------------------------------------------------------------------- autograd
_dfe_branches_op.register_autograd(branches_backward, setup_context=branches_setup)
_dfe_merge_op.register_autograd(merge_backward, setup_context=merge_setup)
spatial_attention.register_autograd(sa_backward, setup_context=sa_setup)


# ---------------------------------------------------------------------------------------------------- the public ops
def dfe_branches(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    rates: Sequence[int],
    bias: torch.Tensor | None = None,
    sum_branches: bool = False,
    relu: bool = False,
) -> torch.Tensor:
    """All DFE branches in one launch: ``(B, nb*C_out, H, W)`` concatenated, or ``(B, C_out, H, W)`` summed.

    Args:
        x: (B, C_in, H, W) input, NCHW or channels_last.
        weight: (nb, T, C_in, C_out) taps per branch in x's dtype (T = 9, or 1 when every rate is 0).
        rates: dilation per branch, 0 for a 1x1 conv (reads tap 0).
        bias: (nb*C_out,) or, when summing, (C_out,) fp32 epilogue bias, or None.
        sum_branches: sum the branches (their centre taps pre-summed into branch 0) instead of concatenating.
        relu: apply ReLU in the epilogue.
    """
    return _dfe_branches_op(x, weight, bias, [int(r) for r in rates], sum_branches, relu)


def dfe_merge(
    cat: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    shortcut: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    relu: bool = False,
) -> torch.Tensor:
    """``act(conv3x3(cat) + conv1x1(x) + bias)`` in one launch.

    Args:
        cat: (B, C_cat, H, W) the concatenated branches.
        x: (B, C_in, H, W) the DFE input, read by the shortcut.
        weight: (9, C_cat, C_out) merge taps in cat's dtype.
        shortcut: (1, C_in, C_out) 1x1 shortcut taps, or None (no shortcut).
        bias: (C_out,) fp32 epilogue bias (merge and shortcut BNs folded), or None.
        relu: apply ReLU in the epilogue.
    """
    return _dfe_merge_op(cat, x, weight, shortcut, bias, relu)


# ------------------------------------------------------------------------------------------------- dead-tap counters
def live_tap_counts(batch, height, width, rates, block_m, sum_branches=False) -> torch.Tensor:
    """Taps each ``_dfe_branches_kernel`` program executes, in program order (int32, one per program row).

    Mirrors the kernel's tile-level rule: a tap is live unless the shifted bounding box of the tile's pixels lies
    entirely in the zero padding.
    """
    n_pix, counts = height * width, []
    for m0 in range(0, n_pix, block_m):
        m_last = min(m0 + block_m - 1, n_pix - 1)
        h_lo, h_hi = m0 // width, m_last // width
        w_lo, w_hi = (m0 % width, m_last % width) if h_lo == h_hi else (0, width - 1)
        per_branch = []
        for i, r in enumerate(rates):
            taps = [4] if r == 0 else [t for t in range(9) if t != 4 or not (sum_branches and i > 0)]
            live = [h_lo + (t // 3 - 1) * r < height and h_hi + (t // 3 - 1) * r >= 0 for t in taps]
            live = [ok and w_lo + (t % 3 - 1) * r < width and w_hi + (t % 3 - 1) * r >= 0 for ok, t in zip(live, taps)]
            per_branch.append(sum(live))
        counts.extend([sum(per_branch)] if sum_branches else per_branch)
    return torch.tensor(counts * batch, dtype=torch.int32)


def branch_tap_counts(x, weight, *, rates, bias=None, sum_branches=False, relu=False):
    """Debug launch of ``_dfe_branches_kernel`` (default tiles) with its tap counter on: returns (output, taps per
    program row)."""
    _check_branches(x, weight, bias, rates, sum_branches)
    out = _out_like(x, weight.shape[-1] * (1 if sum_branches else weight.shape[0]))
    grid, args, const = branches_plan(x, weight.contiguous(), bias, out, None, rates, sum_branches, relu)
    tiles, options = split(conv_config(x.shape[1], weight.shape[-1], x.dtype))  # the default tiles
    counts = torch.full(grid(tiles), -1, dtype=torch.int32, device=x.device)
    args["count_ptr"], const["COUNT_TAPS"] = counts, True
    _dfe_branches_kernel[grid](**args, **const, **tiles, **options)
    return out, counts[:, 0]
