"""One command that proves and measures every GPU path of fastmtl, sized for a short GPU window.

    python -m bench.gpu_suite --out DIR [--data DIR] [--budget-min 6] [--only STEPS] [--dry-run]

Steps, ordered by value, each in its own process with its own share of the budget and a floor that covers cold
compiles and autotuning (slack left by a step that ends early goes to the ones after it); a step that fails,
crashes or runs out of time is recorded as such and the rest go on:

- ``env``: GPU name, clocks, power, memory (NVML), driver, torch / triton / CUDA versions, tools at hand;
- ``kernels``: window attention forward+backward per stage (Triton vs eager vs FlexAttention vs SDPA vs
  compiled vs xformers when installed), then DFE per level at 224 / 512 px, batch 64, forward and
  forward+backward (Triton vs eager vs compiled), as pytest-benchmark JSON;
- ``model``: inference at 224 px batch 64, then a training step at batch 8 and 64, bf16 eager autocast vs bf16
  compiled vs the fastmtl path, with peak memory. Every provider but ``fastmtl`` is built with
  ``kernels="reference"``, and every row records its kernel backend and the fallbacks seen while it ran;
- ``paper``: the paper's ISIC protocol (224 px, batch 8) for one epoch on the fastest training path, timed
  (a warm second validation, the partial epoch's rate when the budget cuts it), and the projected time of its
  150 epochs (``experiments/run.py isic-paper``);
- ``correctness``: the kernel tests on the device (fp32 on real kernels; ``-m gpu``: fp16 / bf16 against the fp32
  reference under the 2x-PyTorch-error rule, forward and backward) and the whole model on the Triton path in
  bf16 (outputs and one training step's gradients), as junit XML;
- ``sanitizer``: compute-sanitizer memcheck over one small launch of every kernel (:mod:`bench.kernel_launches`)
  and racecheck over the window-attention forward and backward, at least a minute per tool, one fixed kernel
  configuration per launch (:mod:`bench.sanitizer`: "could not run" is told apart from "failed");
- then ``summary.md``: every goal with its measured value, how many of its cases were measured (k of n) and
  whether it holds; every step with its test counts, cases and fallbacks.

Each test and benchmark is recorded the moment it finishes (:mod:`bench.record`), so a step the watchdog kills
keeps every case it measured. ``--data`` is checked before any step.

Everything lands in ``--out`` as at most 8 files (suite.json, summary.md, suite.log, correctness.xml,
sanitizer.txt, kernels.json, model.json, paper.json). Progress is printed with timestamps. ``--dry-run`` runs the
same steps on the CPU with tiny shapes (the Triton kernels through the interpreter) and reports the CUDA-only
parts as skipped with the reason: it is a test of the suite, so the command cannot rot while no GPU is at hand.
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from bench.suite_runner import STEP_NAMES, STEPS, Suite, cuda_available
from bench.suite_steps import REPO, SHARED_ISIC
from fastmtl.files import atomic_write_bytes

__all__ = ["SHARED_ISIC", "ingest", "main", "parse_args"]


def ingest(src: Path, results: Path) -> Path:
    """Files a returned suite folder under ``results``: the kernel and model rows merged into one
    ``<device-slug>.json`` (what :mod:`bench.report` renders), the rest into ``<device-slug>/gpu-suite/``; then
    regenerates ``results/README.md``. Returns the JSON's path."""
    from bench.readme import write_readme

    parts = [json.loads((src / f"{n}.json").read_text()) for n in ("kernels", "model") if (src / f"{n}.json").is_file()]
    if not parts:
        raise SystemExit(f"{src} holds neither kernels.json nor model.json: is it a gpu_suite --out folder?")
    merged = {**parts[-1], "benchmarks": [b for p in parts for b in p["benchmarks"]]}
    slug = merged["machine_info"]["fastmtl"]["device_slug"]
    results.mkdir(parents=True, exist_ok=True)
    target = results / f"{slug}.json"
    atomic_write_bytes(target, json.dumps(merged, indent=1).encode())
    extras = results / slug / "gpu-suite"
    extras.mkdir(parents=True, exist_ok=True)
    for name in ("summary.md", "suite.json", "correctness.xml", "sanitizer.txt", "paper.json", "suite.log"):
        if (src / name).is_file():
            shutil.copyfile(src / name, extras / name)
    write_readme(results)
    return target


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_suite", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="result folder (at most 8 files)")
    parser.add_argument("--data", default=None, help=f"ISIC 2017 folder for the paper step (default {SHARED_ISIC})")
    parser.add_argument("--budget-min", type=float, default=6.0, help="minutes the steps share (default 6)")
    parser.add_argument(
        "--hard-limit-min",
        type=float,
        default=9.5,
        help="no process outlives this many minutes from the start (default 9.5)",
    )
    parser.add_argument("--only", nargs="+", choices=STEP_NAMES, default=None, help="run only these steps")
    parser.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile mode of the compiled baselines (default 'default': max-autotune's "
        "autotuning does not fit a 6-minute budget)",
    )
    parser.add_argument("--dry-run", action="store_true", help="the same steps on CPU with tiny shapes")
    parser.add_argument(
        "--cpu-compile",
        action="store_true",
        help="dry run: also the compiled kernel peers (FlexAttention, torch.compile of the references; minutes of "
        "CPU compilation, the gpu-versions CI leg, which runs the compiled training step on its own)",
    )
    parser.add_argument(
        "--ingest",
        metavar="DIR",
        help="file a returned --out folder under bench/results/ (merged JSON + suite files) and "
        "regenerate its README; runs nothing",
    )
    parser.add_argument("--results", default=str(REPO / "bench" / "results"), help="where --ingest files results")
    parser.add_argument("--verbose", action="store_true", help="also print every step's output (always in suite.log)")
    args = parser.parse_args(argv)
    if not args.out and not args.ingest:
        parser.error("give --out DIR (run the suite) or --ingest DIR (file a returned run)")
    if args.budget_min <= 0 or args.hard_limit_min < args.budget_min:
        parser.error(f"--budget-min must be > 0 and <= --hard-limit-min; got {args.budget_min} / {args.hard_limit_min}")
    if args.data and not Path(args.data).is_dir():  # before any step: a typo must not cost a GPU window
        parser.error(f"--data {args.data}: no such folder (an ISIC 2017 folder, e.g. .gpu-data/isic2017 carried "
                     "into the checkout)")  # fmt: skip
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ingest:
        suite_json = Path(args.ingest) / "suite.json"
        dry = suite_json.is_file() and json.loads(suite_json.read_text()).get("env", {}).get("dry_run")
        if dry and Path(args.results).resolve() == (REPO / "bench" / "results").resolve():
            raise SystemExit(f"{args.ingest} is a dry run: it does not belong in bench/results (use --results DIR)")
        print(f"filed {ingest(Path(args.ingest), Path(args.results))}")
        return 0
    if not args.dry_run and not cuda_available():
        raise SystemExit("gpu_suite: no CUDA device here; run it on a GPU machine, or check it on CPU with --dry-run")
    suite = Suite(args)
    chosen = [s for s in STEPS if args.only is None or s.name in args.only]
    if "env" not in [s.name for s in chosen]:
        chosen.insert(0, STEPS[0])  # every result names its machine
    suite.run(chosen)
    return suite.finish()


if __name__ == "__main__":
    sys.exit(main())
