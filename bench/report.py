"""Markdown tables and PNG bar plots from pytest-benchmark JSON files.

Usage::

    python -m bench.report out.json [more.json ...] [--out DIR]
    python -m bench.report --compare a.json b.json [--out DIR]
    python -m bench.report --readme bench/results

For each group (``benchmark.group``), one table with the providers as columns and, as rows, the throughput
(images/s when recorded, else GB/s or TFLOP/s), ms per call and the speedups vs eager and vs compiled PyTorch;
a summary table per suite (the group's first ``-`` field: ``infer``, ``train``, ...) with one row per group; AOT
kernel compile stats (extra_info dicts with ``n_regs``) when present; a bar plot per suite (``<suite>.png``).
``--compare`` puts two runs side by side (B / A ratio per group and provider) and plots both.
The Markdown goes to stdout and to ``DIR/report.md``; the PNGs to ``DIR`` (default ``bench-report``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.benchmarks import load
from bench.readme import write_readme
from bench.render import compare, label, render

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="*", help="pytest-benchmark JSON file(s) of one run")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two JSON files to show side by side")
    parser.add_argument("--out", default="bench-report", help="folder for report.md and the PNGs")
    parser.add_argument("--readme", metavar="DIR", help="render every JSON in DIR into DIR/README.md (bench/results)")
    args = parser.parse_args(argv)
    if args.readme:
        print(write_readme(Path(args.readme)))
        return 0
    if not args.json and not args.compare:
        parser.error("give JSON file(s) to render, --compare A B, or --readme DIR")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    if args.json:
        parts.append(render(load(args.json), out_dir))
    if args.compare:
        a, b = load([args.compare[0]]), load([args.compare[1]])
        labels = (label(a, args.compare[0]), label(b, args.compare[1]))
        if labels[0] == labels[1]:
            labels = (f"{labels[0]} ({Path(args.compare[0]).name})", f"{labels[1]} ({Path(args.compare[1]).name})")
        parts.append(compare(a, b, labels, out_dir))
    text = "\n".join(parts)
    (out_dir / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
