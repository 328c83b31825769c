"""The GPU suite's steps (:class:`Steps`, mixed into :class:`bench.suite_runner.Suite`): what each runs and records.

Every pytest step runs with the ``bench.record`` plugin, so that each test and benchmark lands in
``OUT/<step>.jsonl`` as it finishes; the step folds that file into its record (test counts, cases measured of
planned, fallbacks, failures) and removes it. When the watchdog killed the step before pytest-benchmark wrote its
JSON, the JSON is rebuilt from the record, so the cases measured before the kill are kept.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from bench import record as records
from bench import sanitizer
from fastmtl.files import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
SHARED_ISIC = REPO.parent / "shared" / "data" / "isic2017"


class Steps:
    """Step methods; the host class provides ``out``, ``args``, ``cuda``, ``env``, ``say`` and ``run_process``."""

    out: Path
    cuda: bool
    env: dict[str, Any]

    def _pytest(self, name: str, budget: float, args: list[str], env: dict[str, str] | None = None):
        """Runs pytest for step ``name``; returns (exit code or None when killed, the folded record)."""
        path = self.out / f"{name}.jsonl"
        path.unlink(missing_ok=True)
        env = {"FASTMTL_DEADLINE": str(time.time() + 0.85 * budget), records.ENV: str(path), **(env or {})}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "bench.deadline", "-p",
               "bench.record", "-rs", *args]  # fmt: skip
        code = self.run_process(name, cmd, budget, env)
        folded = records.fold(records.read(path))
        path.unlink(missing_ok=True)
        return code, folded

    def _interp_env(self) -> dict[str, str]:
        return {} if self.cuda else {"TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}

    def step_env(self, budget: float) -> dict[str, Any]:
        import platform
        import shutil

        from bench import telemetry

        info = telemetry.machine_info()
        info["gpu_now"] = telemetry.gpu_snapshot()
        info["dry_run"] = bool(self.args.dry_run)
        info["tools"] = {t: shutil.which(t) for t in ("nvidia-smi", "ncu", "nvcc")}
        info["tools"]["compute-sanitizer"] = sanitizer.find()  # also where CUDA installs it off PATH
        info["python"] = platform.python_version()
        info["xformers"] = telemetry.dist_version("xformers")
        info["pytest_xdist"] = telemetry.dist_version("pytest-xdist")
        info["device_slug"] = telemetry.device_slug(info)
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
        code, rec = self._pytest("correctness", budget, args, self._interp_env())
        counts = rec["counts"] if rec["counts"]["tests"] else junit_counts(junit)
        record = {"status": status(code, counts), "counts": counts, "exit_code": code, "failures": rec["failures"][:5],
                  "cases": f"{counts['passed']} of {counts['tests']} passed"}  # fmt: skip
        if not self.cuda:
            record["reason"] = "no CUDA device: the GPU tests were collected and skipped"
        return record

    def step_sanitizer(self, budget: float) -> dict[str, Any]:
        report = self.out / "sanitizer.txt"
        tool_path = sanitizer.find()
        launches = [sys.executable, "-m", "bench.kernel_launches"]
        env = dict(sanitizer.ENV)
        if not self.cuda or tool_path is None:
            why = "no CUDA device" if not self.cuda else "compute-sanitizer not found in " + ", ".join(
                sanitizer.candidates())  # fmt: skip
            code = self.run_process("sanitizer", launches, budget, {**self._interp_env(), **env})  # the launches alone
            report.write_text(f"sanitizer could not run: {why}; the launch script ran without it, exit code {code}\n")
            tools = {tool: f"could not run: {why}" for tool, _ in sanitizer.TOOLS}
            return {"status": "skipped" if code == 0 else "failed", "tools": tools,
                    "reason": f"could not run: {why} (the launches alone: exit code {code})"}  # fmt: skip
        results, lines = {}, []
        per_tool = max(budget / len(sanitizer.TOOLS), sanitizer.TOOL_FLOOR_S)
        for tool, extra in sanitizer.TOOLS:
            log = Path(tempfile.mkstemp(prefix=f"fastmtl-{tool}-", suffix=".txt")[1])
            started = time.time()
            code = self.run_process(f"sanitizer-{tool}", sanitizer.command(tool_path, tool, log, launches, extra),
                                    per_tool, env, hard_s=per_tool)  # fmt: skip
            text = log.read_text(errors="replace") if log.exists() else ""
            log.unlink(missing_ok=True)
            results[tool] = sanitizer.verdict(code, text, time.time() - started)
            lines += [f"==== {tool}: {results[tool]}", text[-200_000:]]
        report.write_text("\n".join(lines))
        return {"status": sanitizer.step_status(results), "tools": results,
                "reason": "; ".join(f"{k} {v}" for k, v in results.items() if v != "ok")}  # fmt: skip

    def _bench(self, name: str, files: list[str], budget: float) -> dict[str, Any]:
        from bench.benchmarks import add_speedups
        from bench.goals import load_benchmarks

        path = self.out / f"{name}.json"
        path.unlink(missing_ok=True)
        args = [*files, f"--benchmark-json={path}", "--benchmark-group-by=group"]
        if self.cuda:
            args += ["--bench-suite", "--bench-budget-s", "0.3", "--bench-compile-mode", self.args.compile_mode]
        else:
            args += ["--bench-quick"] + (["--bench-cpu-compile"] if self.args.cpu_compile and name == "kernels" else [])
        code, rec = self._pytest(name, budget, args, self._interp_env())
        rows = load_benchmarks(path)
        kept = not rows and bool(rec["benchmarks"])
        if kept:  # killed before pytest-benchmark wrote its JSON: the record has every case that finished
            rows = rec["benchmarks"]
            add_speedups(rows)
            info = {"fastmtl": {**self.env, "kept_from_record": True}}
            atomic_write_bytes(path, json.dumps({"machine_info": info, "benchmarks": rows}, default=str).encode())
        counts = rec["counts"]
        record = {
            "status": status(code, counts),
            "exit_code": code,
            "measured": len(rows),
            "counts": counts,
            "cases": f"{len(rows)} of {counts['tests']} measured",
            "groups_planned": rec["groups_planned"],
            "fallbacks": rec["fallbacks"],
            "failures": rec["failures"][:5],
            "kept_from_record": kept,
        }
        reasons = []
        if kept:
            reasons.append(f"killed: kept the {len(rows)} cases recorded before the kill")
        if self.cuda and self.args.compile_mode != "max-autotune":
            reasons.append(f"compiled baselines use torch.compile mode={self.args.compile_mode!r}")
        if not self.cuda:
            reasons.append("dry run: tiny CPU shapes; CUDA-only providers skipped")
        record["reason"] = "; ".join(reasons)
        return record

    def step_kernels(self, budget: float) -> dict[str, Any]:
        # Most valuable first: window attention forward+backward, then DFE level by level.
        return self._bench("kernels", ["bench/test_window_attention.py", "bench/test_dfe.py"], budget)

    def step_model(self, budget: float) -> dict[str, Any]:
        files = ["bench/test_model.py"]  # test_infer before test_train
        if not self.cuda:
            files += ["-k", "32px and not smp"]  # the dry run: the smallest size, our own models
        return self._bench("model", files, budget)

    def step_paper(self, budget: float) -> dict[str, Any]:
        from bench.fallbacks import paper_fallbacks

        data = self.data_root()
        if data is None:
            return {"status": "skipped", "reason": "no ISIC 2017 folder: pass --data DIR"}
        with tempfile.TemporaryDirectory(prefix="fastmtl-paper-") as tmp:
            cmd = [sys.executable, "experiments/run.py", *"isic-paper --model resformer_mtl --seed 1234".split()]
            cmd += ["--data-root", str(data), "--epochs", "1", "--out", tmp, "--budget-min", f"{budget / 60:.2f}"]
            cmd += ["--runs", str(Path(tmp) / "runs")]  # its checkpoints (~900 MB on a GPU) go with the folder
            cmd += ["--reserve-s", "20"]  # the suite wants the training rate; the final evaluation needs seconds
            if not self.cuda:
                tiny = "--limit-images 8 --set img_size=32 --set store_size=32 --set batch_size=2 --set max_val_steps=2"
                cmd += tiny.split()  # eager: compiling the training step on CPU outlasts any step budget
            code = self.run_process("paper", cmd, budget, None if self.cuda else {"CUDA_VISIBLE_DEVICES": ""})
            summary = Path(tmp) / "summary.json"
            if summary.is_file():  # written after every validation: a killed run keeps its last one
                atomic_write_bytes(self.out / "paper.json", summary.read_bytes())
        paper = json.loads((self.out / "paper.json").read_text()) if (self.out / "paper.json").is_file() else {}
        record: dict[str, Any] = {
            "projected_150_epochs_min": paper.get("projected_150_epochs_min"),
            "rate_from": paper.get("rate_from"),
            "epochs_done_of_paper": paper.get("epochs_done_of_paper"),
            "fallbacks": dict.fromkeys(paper_fallbacks(paper), 1),
            "exit_code": code,
        }
        if code != 0:
            return {**record, "status": "failed" if code is not None else "timed out"}
        record["status"] = "ok"
        if not self.cuda:
            record["reason"] = "dry run: 8 images at 32 px on CPU; the projection is for this CPU"
        return record

    def data_root(self) -> Path | None:
        if self.args.data:
            return Path(self.args.data)
        return SHARED_ISIC if SHARED_ISIC.is_dir() else None


def junit_counts(path: Path) -> dict[str, int]:
    """tests / passed / failed / skipped of a junit XML (zeros when it was not written)."""
    counts = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        root = None
    for suite in root.iter("testsuite") if root is not None else ():
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    failed = counts["failures"] + counts["errors"]
    return {"tests": counts["tests"], "passed": counts["tests"] - failed - counts["skipped"], "failed": failed,
            "skipped": counts["skipped"]}  # fmt: skip


def status(code: int | None, counts: dict[str, int]) -> str:
    if code is None:
        return "timed out"
    if code in (0, 5) and not counts.get("failed"):
        return "ok"
    return "failed"
