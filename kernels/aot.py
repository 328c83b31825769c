"""The ahead-of-time compilation report of every kernel configuration at the launch shapes it is given (no GPU
needed): :func:`report`. The shapes are the model's (:mod:`fastmtl.models.launches`, above the kernels), and the
command line that joins the two is ``python -m fastmtl.kernel_report`` (``--json OUT.json`` this report,
autotuning candidates included; ``--report OUT.json`` the roofline report of :mod:`fastmtl.kernels.roofline`).
The compiler and the PTX counts live in :mod:`fastmtl.kernels.aot_compile` (re-exported here); each op's ``aot.py``
lists that op's launches. The dependency runs one way: this module -> ``<op>/aot.py`` -> ``aot_compile``.
"""

from __future__ import annotations

import torch
import triton

from .aot_compile import (
    PTX_OPS,
    SPILL_ALLOWANCES,
    TENSOR_CORE_OPS,
    compile_kernel,
    ptx_ops,
    signature,
    spill_allowance,
)
from .dfe.aot import aot_report
from .window_attention import aot as wa

__all__ = ["PTX_OPS", "SPILL_ALLOWANCES", "TENSOR_CORE_OPS", "compile_kernel", "ptx_ops", "report",
           "signature", "spill_allowance"]  # fmt: skip


def report(
    dfe_shapes,
    window_attention_shapes,
    dtypes=(torch.float16, torch.bfloat16, torch.float32),
    capabilities=(90, 80),
    kernels=("dfe", "window_attention"),
    tuned_capabilities=(90,),
    launches=None,
) -> dict:
    """The AOT report of every kernel configuration launched at the given shapes, autotuning candidates too.

    ``dfe_shapes`` and ``window_attention_shapes`` are the model's launches
    (:func:`fastmtl.models.launches.dfe_shapes` and ``window_attention_shapes``). Needs a process where the kernels
    are JIT functions
    (``TRITON_INTERPRET`` unset when they were imported). Window attention compiles its 16-bit ``dtypes`` only
    (its configurations depend on window, dtype and shift, so each stage's window is compiled once). ``launches``
    restricts the report to these launch names (DFE: ``branches``, ``merge``, ``sa-pool``...; window attention:
    ``fwd``, ``bwd_dkdv``, ``bwd_dq``, ``bwd_dbias``), None for all.

    Returns:
        ``{"torch", "triton", "rows", "spilling", "spill_allowances"}``: one row per compile with ``kernel`` ("dfe"
        or "window_attention"), ``launch``, ``shape``, ``dtype``, ``capability``, ``candidate`` (autotuning
        candidate index, 0 the default), the tiles and launch options, :func:`compile_kernel`'s fields
        (``ptx_ops`` included) and ``spill_allowance``; ``spilling`` lists the rows with spilled registers,
        ``spill_allowances`` is :data:`SPILL_ALLOWANCES`.
    """
    rows = []
    if "dfe" in kernels:
        rows += [
            {"kernel": "dfe", **r} for r in aot_report(dfe_shapes, dtypes, capabilities, launches, tuned_capabilities)
        ]
    if "window_attention" in kernels:
        seen = set()
        low = [d for d in dtypes if d != torch.float32]
        for launch, shape, dtype, shifted in wa.variants(window_attention_shapes, low):
            if launches is not None and launch not in launches:
                continue
            for candidate in range(len(wa.candidates(shape))):
                for cap in capabilities if candidate == 0 else [c for c in capabilities if c in tuned_capabilities]:
                    key = (launch, shape.window, dtype, shifted, candidate, cap)
                    if key in seen:
                        continue
                    seen.add(key)
                    info = wa.kernel_resources(launch, shape, dtype, shifted, cap, candidate)
                    rows.append({"kernel": "window_attention", "launch": launch, "shape": shape.name,
                                 "dtype": str(dtype).split(".")[-1], "shifted": shifted, "capability": cap,
                                 "candidate": candidate, **info})  # fmt: skip
    for row in rows:
        row["spill_allowance"] = spill_allowance(row["capability"], row["dtype"])
    spilling = [r for r in rows if r["n_spills"]]
    return {"torch": torch.__version__, "triton": triton.__version__, "rows": rows, "spilling": spilling,
            "spill_allowances": list(SPILL_ALLOWANCES)}  # fmt: skip
