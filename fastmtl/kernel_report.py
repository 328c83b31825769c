"""``python -m fastmtl.kernel_report``: the ahead-of-time reports of every kernel launch the model makes (no GPU
needed; Triton ships ptxas).

    python -m fastmtl.kernel_report [--json OUT.json] [--img-sizes 224 512] [--kernels dfe window_attention]
                                    [--dtypes float16 bfloat16 float32] [--capabilities 90 80] [--launches ...]
    python -m fastmtl.kernel_report --report OUT.json [--img-sizes 224 512]

``--json`` writes :func:`fastmtl.kernels.aot.report` (every configuration, autotuning candidates included, with
registers, spills and PTX counts); ``--report`` writes the roofline report of :mod:`fastmtl.kernels.roofline`
(each launch at batch 8 / 64 with its sm_90a resources, occupancy, FLOPs, bytes and lower bound on an H100 SXM) and
its tables as OUT.md. The launch shapes are the model's own (:mod:`fastmtl.models.launches`); this module joins
them to the kernels, which sit below the models and do not import them. Run it in a process where the kernels are
JIT functions (``TRITON_INTERPRET`` unset).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from fastmtl.models.launches import IMG_SIZES, dfe_shapes, window_attention_shapes

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fastmtl.kernel_report", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)  # fmt: skip
    parser.add_argument("--json", default="-", help="output file ('-': stdout)")
    parser.add_argument("--img-sizes", type=int, nargs="+", default=list(IMG_SIZES))
    parser.add_argument("--kernels", nargs="+", default=["dfe", "window_attention"])
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16", "float32"])
    parser.add_argument("--capabilities", type=int, nargs="+", default=[90, 80])
    parser.add_argument("--launches", nargs="+", default=None, help="only these launches (default: all)")
    parser.add_argument("--report", default=None, metavar="OUT.json",
                        help="write the roofline report of the model launches (sm_90a, H100 SXM)")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import torch
    import triton

    from fastmtl.kernels import roofline
    from fastmtl.kernels.aot import report

    sizes = tuple(args.img_sizes)
    dfe, attention = dfe_shapes(sizes), window_attention_shapes(sizes)
    if args.report:
        result = roofline.write(Path(args.report), dfe, attention)
        print(f"{len(result['rows'])} launches, {result['distinct_compiles']} distinct compiles for sm_90a "
              f"(triton {triton.__version__}) -> {args.report} and its .md", file=sys.stderr)  # fmt: skip
        return 0
    dtypes = tuple(getattr(torch, d) for d in args.dtypes)
    result = report(dfe, attention, dtypes, tuple(args.capabilities), args.kernels, launches=args.launches)
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
