"""``python -m bench.gpu_suite``: goal judging, time-boxing, and the whole command as a CPU dry run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from bench.goals import GOALS, judge, judge_paper
from bench.gpu_suite import SHARED_ISIC

REPO = Path(__file__).resolve().parents[1]
_HAS_CUDA = torch.cuda.is_available()


def _row(group: str, provider: str, ms: float) -> dict:
    return {
        "group": group,
        "name": f"t[{provider}]",
        "stats": {"median": ms / 1e3},
        "extra_info": {"provider": provider},
    }


def _goal(name_part: str):
    return next(g for g in GOALS if name_part in g.name)


def test_goal_holds_only_when_every_group_reaches_the_target() -> None:
    goal = _goal("DFE >= 1.5x eager")
    rows = [_row("dfe-a-b64-fwd", "eager", 3.0), _row("dfe-a-b64-fwd", "triton", 1.0)]
    rows += [_row("dfe-b-b64-fwd", "eager", 1.4), _row("dfe-b-b64-fwd", "triton", 1.0)]
    verdict = judge(goal, rows, "unused")
    assert verdict["status"] == "misses (1 of 2 groups below)"
    assert verdict["worst_group"] == "dfe-b-b64-fwd" and verdict["worst"] == pytest.approx(1.4)
    assert verdict["geomean"] == pytest.approx((3.0 * 1.4) ** 0.5)
    assert judge(goal, rows[:2], "unused")["status"] == "holds"
    assert judge(goal, rows[:2], "unused", dry_run=True)["status"].startswith("not judged")


def test_goal_without_both_providers_says_why() -> None:
    goal = _goal("FlexAttention")
    rows = [_row("window_attention-s-b64-fwd+bwd", "triton", 1.0)]  # flex was cut short
    verdict = judge(goal, rows, "step kernels timed out")
    assert verdict["status"] == "not measured: step kernels timed out"
    assert judge_paper({"projected_150_epochs_min": 8.5, "train_images_per_s": 560.0}, "")["status"] == "holds"
    assert judge_paper({"projected_150_epochs_min": 12.0, "train_images_per_s": 400.0}, "")["status"] == "misses"
    assert judge_paper(None, "no data")["status"] == "not measured: no data"


@pytest.mark.skipif(_HAS_CUDA, reason="checks the refusal on a machine without CUDA")
def test_without_cuda_only_the_dry_run_runs(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bench.gpu_suite", "--out", str(tmp_path / "o")]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "--dry-run" in done.stderr and not (tmp_path / "o").exists()


def test_deadline_plugin_cuts_short_without_losing_the_report(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text(
        textwrap.dedent("""
        def test_a():
            assert True
    """)
    )
    junit = tmp_path / "out.xml"
    env = {**os.environ, "FASTMTL_DEADLINE": str(time.time() - 1), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "bench.deadline", "-rs", str(tmp_path), f"--junitxml={junit}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cut short: the time budget of this run is spent" in proc.stdout
    assert 'skipped="1"' in junit.read_text()


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    cmd = [sys.executable, "-m", "bench.gpu_suite", "--dry-run", "--out", str(out), "--budget-min", "8"]
    temp = tmp_path / "temp"  # the suite's temp folder, to see that it leaves nothing of its own behind
    temp.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "TMPDIR": str(temp)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert not list(temp.glob("fastmtl-*")), list(temp.iterdir())  # the paper step's runs (~900 MB on a GPU) too
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(out).parts) <= 3 for p in files)  # what a GPU run brings back
    suite = json.loads((out / "suite.json").read_text())
    steps = suite["steps"]
    assert list(steps) == ["env", "correctness", "sanitizer", "kernels", "model", "paper"]
    assert steps["correctness"]["status"] == "ok" and steps["correctness"]["counts"]["tests"] > 0
    assert steps["sanitizer"]["status"] == "skipped" and "no CUDA" in steps["sanitizer"]["reason"]
    assert steps["kernels"]["measured"] > 0 and steps["model"]["measured"] > 0
    if not SHARED_ISIC.is_dir():  # a user's clone: the paper step needs --data
        assert steps["paper"]["status"] == "skipped"
    else:
        assert steps["paper"]["status"] == "ok", steps["paper"]
        assert json.loads((out / "paper.json").read_text())["epochs_done"] >= 1
    summary = (out / "summary.md").read_text()
    assert "dry run" in summary
    for goal in GOALS:
        assert goal.name in summary
    kernels = json.loads((out / "kernels.json").read_text())
    providers = {b["extra_info"]["provider"] for b in kernels["benchmarks"]}
    assert {"triton", "eager"} <= providers  # the kernels ran (interpreter) next to their baselines

    # Filing the returned folder: one merged JSON for bench.report, the suite's own files beside it.
    results = tmp_path / "results"
    ingest = [sys.executable, "-m", "bench.gpu_suite", "--ingest", str(out), "--results", str(results)]
    proc = subprocess.run(ingest, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (merged,) = results.glob("*.json")
    rows = json.loads(merged.read_text())["benchmarks"]
    assert {r["group"].split("-")[0] for r in rows} >= {"dfe", "window_attention", "infer"}
    assert (results / merged.stem / "gpu-suite" / "summary.md").is_file()
    assert merged.stem in (results / "README.md").read_text()
    refused = subprocess.run(ingest[:-2], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "is a dry run" in refused.stderr
