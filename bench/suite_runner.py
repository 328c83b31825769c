"""The GPU suite's runner: the steps in order of value with their shares of the budget and their floors, and
:class:`Suite`, which runs them (each pytest step in its own process under a watchdog), logs with timestamps, keeps
the budget and writes suite.json and summary.md after every step. What each step runs is :mod:`bench.suite_steps`;
the command line is :mod:`bench.gpu_suite`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.suite_steps import REPO, Steps
from fastmtl.files import atomic_write_bytes

__all__ = ["STEP_NAMES", "STEPS", "Step", "Suite", "cuda_available"]


@dataclass(frozen=True)
class Step:
    name: str
    share: float  # of the budget, before redistribution of slack
    floor_s: float  # at least this many seconds (cold compiles, autotuning), the hard limit permitting


# Ordered by value: the kernel goals (window attention fwd+bwd, then DFE per level), the model (inference, then the
# training step), the paper protocol's rate, then the correctness tests and the sanitizer.
STEPS = (
    Step("env", 0.02, 5),
    Step("kernels", 0.22, 90),  # a cold Triton compile + autotune per kernel and shape, Inductor's for the baselines
    Step("model", 0.26, 120),  # Inductor compiles the whole model per provider and shape: ~30-60 s each
    Step("paper", 0.22, 120),  # compiling the training step alone may take a minute or two
    Step("correctness", 0.14, 60),
    Step("sanitizer", 0.14, 2 * 60 + 10),  # two tools, at least 60 s each (bench.sanitizer.TOOL_FLOOR_S)
)
STEP_NAMES = tuple(s.name for s in STEPS)


class Suite(Steps):
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
        self.cuda = not args.dry_run and cuda_available()
        self.env: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------------ logging
    def say(self, text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')} +{time.time() - self.start:5.0f}s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def run_process(
        self, name: str, cmd: list[str], budget_s: float, env: dict[str, str] | None = None, hard_s: float | None = None
    ) -> int | None:
        """Runs ``cmd``, streaming its output into the log; kills it at the step's hard limit (``hard_s`` seconds
        from now, default 1.5 x the budget + 20 s, never past the suite's hard limit) and then returns None."""
        hard = min(time.time() + (1.5 * budget_s + 20 if hard_s is None else hard_s), self.hard_end)
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
            budget = max(remaining * step.share / shares, step.floor_s)
            budget = max(min(budget, self.hard_end - time.time() - 5), 1.0)
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

    # ------------------------------------------------------------------------------------------------ results
    def write_summary(self) -> None:
        from bench.goals import judge_all, load_benchmarks, markdown

        goals = judge_all(self.out, self.records, self.args.dry_run)
        suite = {
            "env": self.env,
            "steps": self.records,
            "goals": goals,
            "args": vars(self.args),
            "wall_s": time.time() - self.start,
        }
        atomic_write_bytes(self.out / "suite.json", json.dumps(suite, indent=1, default=str).encode())
        kernels = load_benchmarks(self.out / "kernels.json")
        atomic_write_bytes(self.out / "summary.md", markdown(goals, self.records, self.env, kernels).encode())

    def finish(self) -> int:
        self.write_summary()
        self.say(f"done in {time.time() - self.start:.0f} s; summary: {self.out / 'summary.md'}")
        print((self.out / "summary.md").read_text(), flush=True)
        self.log.close()
        failed = [n for n, r in self.records.items() if r["status"] in ("failed", "timed out")]
        return 1 if failed else 0


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
