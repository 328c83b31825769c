"""Every kernel configuration a DFE level launches, and their ahead-of-time resource report (no GPU needed).

The launch plans of ``ops.py`` are built on meta tensors, so the compiled configurations are exactly those the
model launches (constexpr flags, integer divisibility of the shapes and strides), each with every autotuning
candidate of that launch (:func:`fastmtl.kernels.dfe.ops.conv_configs`).
"""

from __future__ import annotations

import torch

from ..aot_compile import compile_kernel, spill_allowance
from ..autotune import split
from .ops import BRANCHES, MERGE, SA_GATE, SA_POOL, branches_plan, merge_plan, sa_plans

DEFAULT_RATES = (6, 12, 18)


def kernel_configs(channels: int, side: int, dtype: torch.dtype, batch: int = 8, rates=DEFAULT_RATES) -> list:
    """``(name, kernel, args, constexprs, options, candidate)`` of every launch of a DFE level (eval and training
    paths) and every autotuning candidate of it (``candidate``: its index, 0 the default)."""

    def t(*shape, dt=dtype):
        return torch.empty(shape, dtype=dt, device="meta")

    nb, c = len(rates) + 1, channels
    x, cat, out = t(batch, c, side, side), t(batch, nb * c, side, side), t(batch, c, side, side)
    w, bias = t(nb, 9, c, c), t(nb * c, dt=torch.float32)
    all_rates = [0, *rates]
    plans = {
        "branches": (BRANCHES, branches_plan(x, w, bias, cat, None, all_rates, False, True)),
        "branches-raw": (BRANCHES, branches_plan(x, w, None, cat, None, all_rates, False, False)),
        "branches-sum": (BRANCHES, branches_plan(x, w[1:], bias[:c], out, None, rates, True, True)),
        "shortcut-raw": (BRANCHES, branches_plan(x, t(1, 1, c, c), None, out, None, [0], False, False)),
        "merge": (MERGE, merge_plan(cat, x, t(9, nb * c, c), t(1, c, c), bias[:c], out, True)),
        "merge-raw": (MERGE, merge_plan(cat, x, t(9, nb * c, c), None, None, out, False)),
    }
    pool, gate = sa_plans(out, t(1, 2, 7, 7), t(batch, 2, side * side, dt=torch.float32), out)
    plans["sa-pool"], plans["sa-gate"] = (SA_POOL, pool), (SA_GATE, gate)
    configs = []
    for name, (tuned, (_, args, const)) in plans.items():
        for i, params in enumerate(tuned.candidates({**args, **const})):
            tiles, options = split(params)
            configs.append((name, tuned.fn, args, {**const, **tiles}, options, i))
    return configs


def _key(fn, args, const, opts) -> tuple:
    """What the compiled code depends on: kernel, constexprs, options, dtypes and 16-divisibility of the ints."""
    spec = tuple(
        (k, str(v.dtype)) if isinstance(v, torch.Tensor) else (k, v % 16 == 0, v == 1)
        for k, v in args.items()
        if k not in const
    )
    return fn.__name__, tuple(sorted(const.items())), tuple(sorted(opts.items())), spec


def aot_report(
    shapes,
    dtypes=(torch.float16, torch.bfloat16, torch.float32),
    capabilities=(90, 80),
    kernels=None,
    tuned_capabilities=(90,),
):
    """Compiles every distinct configuration the given ``fastmtl.models.launches.DFEShape`` s use; one dict per compile.

    Args:
        shapes: DFE levels (``channels`` and ``side`` attributes).
        dtypes: activation dtypes.
        capabilities: CUDA compute capabilities (90 compiles for sm_90a); each gets the default configurations.
        kernels: restrict to these launch names (see :func:`kernel_configs`), or None for all.
        tuned_capabilities: the capabilities that also get every other autotuning candidate (the GPU target).

    Returns:
        rows with ``shape``, ``launch``, ``dtype``, ``capability``, ``candidate`` (autotuning candidate index, 0 the
        default), the constexprs and launch options, :func:`fastmtl.kernels.aot_compile.compile_kernel`'s ``n_regs``,
        ``n_spills``, ``shared``, ``has_tensor_cores``, ``ptx_ops``, ... and ``spill_allowance`` (bytes the tests
        accept, :data:`fastmtl.kernels.aot_compile.SPILL_ALLOWANCES`). Configurations that compile to the same code at
        several shapes are compiled once and reported for the first shape.
    """
    rows, seen = [], set()
    for shape in shapes:
        for dtype in dtypes:
            for name, fn, args, const, opts, candidate in kernel_configs(shape.channels, shape.side, dtype):
                if kernels is not None and name not in kernels:
                    continue
                for cap in capabilities:
                    key = (_key(fn, args, const, opts), cap)
                    if key in seen or (candidate and cap not in tuned_capabilities):
                        continue
                    seen.add(key)
                    info = compile_kernel(fn, args, const, opts, cap)
                    dt = str(dtype).split(".")[-1]
                    rows.append({"shape": shape.name, "launch": name, "dtype": dt, "capability": cap,
                                 "candidate": candidate, **const, **opts, **info,
                                 "spill_allowance": spill_allowance(cap, dt)})  # fmt: skip
    return rows
