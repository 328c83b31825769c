"""Every kernel configuration a DFE level launches, and their ahead-of-time resource report (no GPU needed).

The launch plans of ``ops.py`` are built on meta tensors, so the compiled configurations are exactly those the
model launches (tile sizes, constexpr flags, integer divisibility of the shapes and strides).
"""

from __future__ import annotations

import torch

from ..aot import compile_kernel
from ._kernels import _dfe_branches_kernel, _dfe_merge_kernel, _sa_gate_kernel, _sa_pool_kernel
from .ops import branches_plan, merge_plan, sa_plans

DEFAULT_RATES = (6, 12, 18)


def kernel_configs(channels: int, side: int, dtype: torch.dtype, batch: int = 8, rates=DEFAULT_RATES) -> list:
    """``(name, kernel, args, constexprs, options)`` of every launch of a DFE level, eval and training paths."""

    def t(*shape, dt=dtype):
        return torch.empty(shape, dtype=dt, device="meta")

    nb, c = len(rates) + 1, channels
    x, cat, out = t(batch, c, side, side), t(batch, nb * c, side, side), t(batch, c, side, side)
    w, bias = t(nb, 9, c, c), t(nb * c, dt=torch.float32)
    all_rates = [0, *rates]
    plans = {
        "branches": (_dfe_branches_kernel, branches_plan(x, w, bias, cat, None, all_rates, False, True)),
        "branches-raw": (_dfe_branches_kernel, branches_plan(x, w, None, cat, None, all_rates, False, False)),
        "branches-sum": (_dfe_branches_kernel, branches_plan(x, w[1:], bias[:c], out, None, rates, True, True)),
        "shortcut-raw": (_dfe_branches_kernel, branches_plan(x, t(1, 1, c, c), None, out, None, [0], False, False)),
        "merge": (_dfe_merge_kernel, merge_plan(cat, x, t(9, nb * c, c), t(1, c, c), bias[:c], out, True)),
        "merge-raw": (_dfe_merge_kernel, merge_plan(cat, x, t(9, nb * c, c), None, None, out, False)),
    }
    pool, gate = sa_plans(out, t(1, 2, 7, 7), t(batch, 2, side * side, dt=torch.float32), out)
    plans["sa-pool"], plans["sa-gate"] = (_sa_pool_kernel, pool), (_sa_gate_kernel, gate)
    return [(name, fn, plan[-3], plan[-2], plan[-1]) for name, (fn, plan) in plans.items()]


def _key(fn, args, const, opts) -> tuple:
    """What the compiled code depends on: kernel, constexprs, options, dtypes and 16-divisibility of the ints."""
    spec = tuple(
        (k, str(v.dtype)) if isinstance(v, torch.Tensor) else (k, v % 16 == 0, v == 1)
        for k, v in args.items()
        if k not in const
    )
    return fn.__name__, tuple(sorted(const.items())), tuple(sorted(opts.items())), spec


def aot_report(shapes, dtypes=(torch.float16, torch.bfloat16, torch.float32), capabilities=(90, 80), kernels=None):
    """Compiles every distinct configuration the given ``bench.shapes.DFEShape`` s use; one dict per compile.

    Args:
        shapes: DFE levels (``channels`` and ``side`` attributes).
        dtypes: activation dtypes.
        capabilities: CUDA compute capabilities (90 compiles for sm_90a).
        kernels: restrict to these launch names (see :func:`kernel_configs`), or None for all.

    Returns:
        rows with ``shape``, ``launch``, ``dtype``, ``capability`` and :func:`fastmtl.kernels.aot.compile_kernel`'s
        ``n_regs``, ``n_spills``, ``shared``, ``has_tensor_cores``, ... Configurations that compile to the same code
        at several shapes are compiled once and reported for the first shape.
    """
    rows, seen = [], set()
    for shape in shapes:
        for dtype in dtypes:
            for name, fn, args, const, opts in kernel_configs(shape.channels, shape.side, dtype):
                if kernels is not None and name not in kernels:
                    continue
                for cap in capabilities:
                    key = (_key(fn, args, const, opts), cap)
                    if key in seen:
                        continue
                    seen.add(key)
                    info = compile_kernel(fn, args, const, opts, cap)
                    rows.append({"shape": shape.name, "launch": name, "dtype": str(dtype).split(".")[-1],
                                 "capability": cap, **const, **opts, **info})  # fmt: skip
    return rows
