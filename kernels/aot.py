"""The ahead-of-time compilation report of every kernel configuration the model launches (no GPU needed).

``python -m fastmtl.kernels.aot --json OUT.json`` (from the repository root, which holds ``bench/shapes.py``)
writes the report, autotuning candidates included; ``--report OUT.json`` writes the roofline report instead
(:mod:`fastmtl.kernels.roofline`: each launch of the model at 224 / 512 px, batch 8 / 64, with its sm_90a
resources, occupancy, FLOPs, bytes and lower bound on an H100 SXM) and its tables as OUT.md. The compiler and the
PTX counts live in :mod:`fastmtl.kernels.aot_compile` (re-exported here); each op's ``aot.py`` lists that op's
launches. The dependency runs one way: this module -> ``<op>/aot.py`` -> ``aot_compile``.
"""

from __future__ import annotations

from pathlib import Path

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

__all__ = ["PTX_OPS", "SPILL_ALLOWANCES", "TENSOR_CORE_OPS", "compile_kernel", "main", "ptx_ops", "report",
           "signature", "spill_allowance"]  # fmt: skip


def report(
    img_sizes=(224, 512),
    dtypes=(torch.float16, torch.bfloat16, torch.float32),
    capabilities=(90, 80),
    kernels=("dfe", "window_attention"),
    tuned_capabilities=(90,),
    launches=None,
) -> dict:
    """The AOT report of every kernel configuration the model launches at ``img_sizes``, autotuning candidates too.

    Needs ``bench.shapes`` (run from the repository root) and a process where the kernels are JIT functions
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
    from bench.shapes import dfe_shapes, window_attention_shapes

    rows = []
    if "dfe" in kernels:
        rows += [
            {"kernel": "dfe", **r}
            for r in aot_report(dfe_shapes(img_sizes), dtypes, capabilities, launches, tuned_capabilities)
        ]
    if "window_attention" in kernels:
        seen = set()
        low = [d for d in dtypes if d != torch.float32]
        for launch, shape, dtype, shifted in wa.variants(window_attention_shapes(img_sizes), low):
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


def main(argv=None) -> int:
    """``python -m fastmtl.kernels.aot [--json OUT] [--img-sizes 224 512] [--kernels dfe window_attention] ...``"""
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m fastmtl.kernels.aot", description=main.__doc__)
    parser.add_argument("--json", default="-", help="output file ('-': stdout)")
    parser.add_argument("--img-sizes", type=int, nargs="+", default=[224, 512])
    parser.add_argument("--kernels", nargs="+", default=["dfe", "window_attention"])
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16", "float32"])
    parser.add_argument("--capabilities", type=int, nargs="+", default=[90, 80])
    parser.add_argument("--launches", nargs="+", default=None, help="only these launches (default: all)")
    parser.add_argument("--report", default=None, metavar="OUT.json",
                        help="write the roofline report of the model launches (sm_90a, H100 SXM)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.report:
        from .roofline import write

        result = write(Path(args.report), tuple(args.img_sizes))
        print(f"{len(result['rows'])} launches, {result['distinct_compiles']} distinct compiles for sm_90a "
              f"(triton {triton.__version__}) -> {args.report} and its .md", file=sys.stderr)  # fmt: skip
        return 0
    dtypes = tuple(getattr(torch, d) for d in args.dtypes)
    result = report(tuple(args.img_sizes), dtypes, tuple(args.capabilities), args.kernels, launches=args.launches)
    text = json.dumps(result, indent=1)
    if args.json == "-":
        print(text)
    else:
        Path(args.json).write_text(text + "\n")
    n, bad = len(result["rows"]), len(result["spilling"])
    over = sum(r["n_spills"] > r["spill_allowance"] for r in result["spilling"])
    print(f"{n} configurations compiled (triton {triton.__version__}), {bad} spill registers, {over} beyond the"
          " stated allowances", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
