"""One command that proves and measures every GPU path of fastmtl, sized for a short GPU window.

    python -m bench.gpu_suite --out DIR [--data DIR] [--budget-min 6] [--only STEPS] [--dry-run]

Steps, in order, each in its own process with its own share of the budget (slack left by a step that ends early
goes to the ones after it); a step that fails, crashes or runs out of time is recorded as such and the rest go on:

- ``env``: GPU name, clocks, power, memory (NVML), driver, torch / triton / CUDA versions, tools at hand;
- ``correctness``: the kernel tests on the device (fp32 on real kernels; ``-m gpu``: fp16 / bf16 against the fp32
  reference under the 2x-PyTorch-error rule, forward and backward) and the whole model on the Triton path in
  bf16 (outputs and one training step's gradients), as junit XML;
- ``sanitizer``: compute-sanitizer memcheck over one small launch of every kernel (:mod:`bench.kernel_launches`)
  and racecheck over the window-attention forward and backward;
- ``kernels``: DFE per level at 224 / 512 px, batch 64, forward and forward+backward (Triton vs eager vs
  compiled) and window attention forward+backward per stage (Triton vs eager vs FlexAttention vs SDPA vs
  compiled vs xformers when installed), as pytest-benchmark JSON;
- ``model``: inference at 224 px batch 64 and a training step at batch 8 and 64, bf16 eager autocast vs bf16
  compiled vs the fastmtl path, with peak memory;
- ``paper``: one epoch of the paper's ISIC protocol (224 px, batch 8) on the fastest training path, timed, and
  the projected time of its 150 epochs (``experiments/run.py isic-paper``);
- then ``summary.md``: every goal with its measured value and whether it holds.

Everything lands in ``--out`` as at most 8 files (suite.json, summary.md, suite.log, correctness.xml,
sanitizer.txt, kernels.json, model.json, paper.json). Progress is printed with timestamps. ``--dry-run`` runs the
same steps on the CPU with tiny shapes (the Triton kernels through the interpreter) and reports the CUDA-only
parts as skipped with the reason: it is a test of the suite, so the command cannot rot while no GPU is at hand.
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastmtl.files import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
SHARED_ISIC = REPO.parent / "shared" / "data" / "isic2017"


@dataclass(frozen=True)
class Step:
    name: str
    share: float  # of the budget, before redistribution of slack


STEPS = (
    Step("env", 0.02),
    Step("correctness", 0.17),
    Step("sanitizer", 0.08),
    Step("kernels", 0.20),
    Step("model", 0.23),
    Step("paper", 0.30),  # compiling the training step alone may take a minute or two
)
STEP_NAMES = tuple(s.name for s in STEPS)


class Suite:
    """Runs the steps, logs them, and keeps the budget."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = open(self.out / "suite.log", "a", encoding="utf-8")  # noqa: SIM115 - closed in finish()
        self.start = time.time()
        self.budget_s = args.budget_min * 60.0
        self.hard_end = self.start + args.hard_limit_min * 60.0
        self.records: dict[str, dict[str, Any]] = {}
        self.cuda = not args.dry_run and _cuda_available()
        self.env: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------------ logging
    def say(self, text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')} +{time.time() - self.start:5.0f}s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def run_process(self, name: str, cmd: list[str], budget_s: float, env: dict[str, str] | None = None) -> int | None:
        """Runs ``cmd``, streaming its output into the log; kills it at the step's hard limit (returns None)."""
        hard = min(time.time() + 1.5 * budget_s + 20, self.hard_end)
        self.say(f"{name}: $ {' '.join(cmd)}")
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        killed = threading.Event()

        def watchdog() -> None:
            try:
                proc.wait(timeout=max(hard - time.time(), 0))
            except subprocess.TimeoutExpired:
                killed.set()
                os.killpg(proc.pid, 9)

        threading.Thread(target=watchdog, daemon=True).start()
        for line in proc.stdout:
            self.log.write(f"  {name}| {line}")
            if self.args.verbose:
                print(f"  {name}| {line}", end="", flush=True)
        self.log.flush()
        code = proc.wait()
        return None if killed.is_set() else code

    # -------------------------------------------------------------------------------------------------- steps
    def run(self, todo: list[Step]) -> None:
        self.say(
            f"fastmtl GPU suite -> {self.out} (budget {self.args.budget_min:g} min"
            f"{', dry run on CPU' if self.args.dry_run else ''})"
        )
        for i, step in enumerate(todo):
            remaining = self.budget_s - (time.time() - self.start)
            shares = sum(s.share for s in todo[i:])
            budget = max(remaining * step.share / shares, 10.0)
            t0 = time.time()
            self.say(f"--- {step.name} (budget {budget:.0f} s)")
            try:
                record = getattr(self, f"step_{step.name}")(budget)
            except Exception as exc:  # one broken step must not stop the others
                record = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            record.update(seconds=time.time() - t0, budget_s=budget)
            self.records[step.name] = record
            self.say(
                f"{step.name}: {record['status']} in {record['seconds']:.0f} s"
                + (f" ({record['reason']})" if record.get("reason") else "")
            )
            self.write_summary()

    def _pytest(self, name: str, budget: float, args: list[str], env: dict[str, str] | None = None) -> int | None:
        env = {"FASTMTL_DEADLINE": str(time.time() + 0.85 * budget), **(env or {})}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "bench.deadline", "-rs", *args]
        return self.run_process(name, cmd, budget, env)

    def _interp_env(self) -> dict[str, str]:
        return {} if self.cuda else {"TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}

    def step_env(self, budget: float) -> dict[str, Any]:
        from bench import telemetry

        info = telemetry.machine_info()
        info["gpu_now"] = telemetry.gpu_snapshot()
        info["dry_run"] = bool(self.args.dry_run)
        info["tools"] = {t: shutil.which(t) for t in ("nvidia-smi", "ncu", "nvcc")}
        info["tools"]["compute-sanitizer"] = _sanitizer()  # also where CUDA installs it off PATH
        info["python"] = sys.version.split()[0]
        info["xformers"] = telemetry.dist_version("xformers")
        info["pytest_xdist"] = telemetry.dist_version("pytest-xdist")
        self.env = info
        gpu = (info.get("gpu") or {}).get("name")
        return {"status": "ok", "reason": gpu or "no CUDA device: a dry run"}

    def step_correctness(self, budget: float) -> dict[str, Any]:
        junit = self.out / "correctness.xml"
        args = [
            "tests/kernels",
            "tests/models/test_model_gpu.py",
            f"--junitxml={junit}",
            "--ignore=tests/kernels/test_dfe_aot.py",
            "--ignore=tests/kernels/test_window_attention_aot.py",
        ]
        if self.cuda:
            args += ["-m", "not slow"]
            if self.env.get("pytest_xdist"):
                args += ["-n", "8"]  # Triton compilation is CPU-bound: spread the tests over the host's cores
        else:
            args += ["-m", "gpu"]  # dry run: the GPU tests are collected and reported as skipped
        code = self._pytest("correctness", budget, args, self._interp_env())
        counts = _junit_counts(junit)
        record = {"status": _status(code, counts), "counts": counts, "exit_code": code}
        if not self.cuda:
            record["reason"] = "no CUDA device: the GPU tests were collected and skipped"
        return record

    def step_sanitizer(self, budget: float) -> dict[str, Any]:
        report = self.out / "sanitizer.txt"
        sanitizer = _sanitizer()
        launches = [sys.executable, "-m", "bench.kernel_launches"]
        if not self.cuda or sanitizer is None:
            why = "no CUDA device" if not self.cuda else "compute-sanitizer not found"
            code = self.run_process("sanitizer", launches, budget, self._interp_env())  # the launches alone
            report.write_text(f"sanitizer skipped: {why}; the launch script ran without it, exit code {code}\n")
            return {"status": "skipped" if code == 0 else "failed", "reason": f"{why} (launches exit code {code})"}
        env = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}  # every allocation its own block, so overruns are visible
        results, lines = {}, []
        for tool, extra in (("memcheck", []), ("racecheck", ["--only", "window_attention"])):
            log = Path(tempfile.mkstemp(prefix=f"fastmtl-{tool}-", suffix=".txt")[1])
            cmd = [sanitizer, "--tool", tool, "--error-exitcode", "99", "--log-file", str(log), *launches, *extra]
            code = self.run_process(f"sanitizer-{tool}", cmd, budget / 2, env)
            text = log.read_text(errors="replace") if log.exists() else ""
            log.unlink(missing_ok=True)
            results[tool] = "ok" if code == 0 else ("timed out" if code is None else f"exit code {code}")
            lines += [f"==== {tool}: {results[tool]}", text[-200_000:]]
        report.write_text("\n".join(lines))
        bad = {k: v for k, v in results.items() if v != "ok"}
        return {
            "status": "ok" if not bad else "failed",
            "tools": results,
            "reason": "; ".join(f"{k} {v}" for k, v in bad.items()),
        }

    def _bench(self, name: str, files: list[str], budget: float) -> dict[str, Any]:
        path = self.out / f"{name}.json"
        args = [*files, f"--benchmark-json={path}", "--benchmark-group-by=group"]
        if self.cuda:
            args += ["--bench-suite", "--bench-budget-s", "0.3", "--bench-compile-mode", self.args.compile_mode]
        else:
            args += ["--bench-quick"]
        code = self._pytest(name, budget, args, self._interp_env())
        from bench.goals import load_benchmarks

        rows = load_benchmarks(path)
        record = {
            "status": _status(code, {"errors": 0, "failures": 0 if code in (0, 5) else 1}),
            "exit_code": code,
            "measured": len(rows),
        }
        if self.cuda and self.args.compile_mode != "max-autotune":
            record["reason"] = f"compiled baselines use torch.compile mode={self.args.compile_mode!r}"
        if not self.cuda:
            record["reason"] = "dry run: tiny CPU shapes; CUDA-only providers skipped"
        return record

    def step_kernels(self, budget: float) -> dict[str, Any]:
        return self._bench("kernels", ["bench/test_dfe.py", "bench/test_window_attention.py"], budget)

    def step_model(self, budget: float) -> dict[str, Any]:
        files = ["bench/test_model.py"]
        if not self.cuda:
            files += ["-k", "32px and not smp"]  # the dry run: the smallest size, our own models
        return self._bench("model", files, budget)

    def step_paper(self, budget: float) -> dict[str, Any]:
        data = Path(self.args.data) if self.args.data else (SHARED_ISIC if SHARED_ISIC.is_dir() else None)
        if data is None:
            return {"status": "skipped", "reason": "no ISIC 2017 folder: pass --data DIR"}
        with tempfile.TemporaryDirectory(prefix="fastmtl-paper-") as tmp:
            cmd = [sys.executable, "experiments/run.py", *"isic-paper --model resformer_mtl --seed 1234".split()]
            cmd += ["--data-root", str(data), "--epochs", "1", "--out", tmp, "--budget-min", f"{budget / 60:.2f}"]
            cmd += ["--runs", str(Path(tmp) / "runs")]  # its checkpoints (~900 MB) go with the folder
            cmd += ["--reserve-s", "20"]  # the suite wants the training rate; the final evaluation needs seconds
            if not self.cuda:
                tiny = "--limit-images 8 --set img_size=32 --set store_size=32 --set batch_size=2 --set max_val_steps=2"
                cmd += tiny.split()
            code = self.run_process("paper", cmd, budget, None if self.cuda else {"CUDA_VISIBLE_DEVICES": ""})
            summary = Path(tmp) / "summary.json"
            if summary.is_file():
                shutil.copyfile(summary, self.out / "paper.json")
        if code != 0:
            return {"status": "failed" if code is not None else "timed out", "exit_code": code}
        paper = json.loads((self.out / "paper.json").read_text())
        record = {"status": "ok", "projected_150_epochs_min": paper.get("projected_150_epochs_min")}
        if not self.cuda:
            record["reason"] = "dry run: 8 images at 32 px on CPU; the projection is for this CPU"
        return record

    # ------------------------------------------------------------------------------------------------ results
    def write_summary(self) -> None:
        from bench.goals import judge_all, markdown

        goals = judge_all(self.out, self.records, self.args.dry_run)
        suite = {
            "env": self.env,
            "steps": self.records,
            "goals": goals,
            "args": vars(self.args),
            "wall_s": time.time() - self.start,
        }
        atomic_write_bytes(self.out / "suite.json", json.dumps(suite, indent=1, default=str).encode())
        atomic_write_bytes(self.out / "summary.md", markdown(goals, self.records, self.env).encode())

    def finish(self) -> int:
        self.write_summary()
        self.say(f"done in {time.time() - self.start:.0f} s; summary: {self.out / 'summary.md'}")
        print((self.out / "summary.md").read_text(), flush=True)
        self.log.close()
        failed = [n for n, r in self.records.items() if r["status"] in ("failed", "timed out")]
        return 1 if failed else 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    for candidate in (found, "/usr/local/cuda/bin/compute-sanitizer"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _junit_counts(path: Path) -> dict[str, int]:
    """tests / failures / errors / skipped of a junit XML (zeros when it was not written)."""
    counts = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return counts
    for suite in root.iter("testsuite"):
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    return counts


def _status(code: int | None, counts: dict[str, int]) -> str:
    if code is None:
        return "timed out"
    if code in (0, 5) and not counts.get("failures") and not counts.get("errors"):
        return "ok"
    return "failed"


def ingest(src: Path, results: Path) -> Path:
    """Files a returned suite folder under ``results``: the kernel and model rows merged into one
    ``<device-slug>.json`` (what :mod:`bench.report` renders), the rest into ``<device-slug>/gpu-suite/``; then
    regenerates ``results/README.md``. Returns the JSON's path."""
    from bench.report import write_readme

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
    if not args.dry_run and not _cuda_available():
        raise SystemExit("gpu_suite: no CUDA device here; run it on a GPU machine, or check it on CPU with --dry-run")
    suite = Suite(args)
    chosen = [s for s in STEPS if args.only is None or s.name in args.only]
    if "env" not in [s.name for s in chosen]:
        chosen.insert(0, STEPS[0])  # every result names its machine
    suite.run(chosen)
    return suite.finish()


if __name__ == "__main__":
    sys.exit(main())
