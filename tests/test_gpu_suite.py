"""``python -m bench.gpu_suite``: goal judging, time-boxing, and the whole command as a CPU dry run."""

from __future__ import annotations

import importlib.util
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


def test_every_baseline_builds_with_the_reference_kernels_on_a_cuda_device() -> None:
    """On CUDA (a device object only: nothing runs) only the ``fastmtl`` provider may run Triton kernels; every
    baseline and peer of the whole-model matrix is built with ``kernels="reference"`` and says so."""
    from bench import test_model as tm
    from bench.cases import ModelCase, cases
    from bench.fallbacks import kernel_backend_of

    cuda = torch.device("cuda")
    seen = {}
    for mode in ("infer", "train"):
        for provider in dict.fromkeys(c.provider for c in cases(mode, quick=False)):
            case = ModelCase(mode, provider, 32, 1)
            if case.model == "smp_unet_r34" and importlib.util.find_spec("segmentation_models_pytorch") is None:
                continue
            model = tm.build_model(case, cuda)
            if mode == "infer":
                net, _ = tm._inference_net(case, model.eval(), cuda, cpu_compile=False)
            else:
                net, _ = tm._train_parts(case, model, torch.zeros(1, 3, 32, 32), cuda)
            seen[f"{mode} {provider}"] = kernel_backend_of(net, cuda)
    assert seen.pop("infer fastmtl") == seen.pop("train fastmtl") == "triton"
    assert seen and all(backend in ("reference", "none") for backend in seen.values()), seen
    assert seen["infer eager"] == seen["train compile"] == seen["infer resformer_mtl_nodfe"] == "reference"


def test_record_folds_what_a_killed_step_wrote(tmp_path: Path) -> None:
    from bench.record import fold, read

    row = {"group": "dfe-x-b2-fwd", "extra_info": {"provider": "triton", "fallbacks": ["CUDA graphs skipped"]}}
    lines = [
        {"nodeid": "a", "outcome": "passed", "group": "dfe-x-b2-fwd", "benchmark": row, "reason": ""},
        {"nodeid": "b", "outcome": "skipped", "group": "dfe-y-b2-fwd", "reason": "needs CUDA"},
        {"nodeid": "c", "outcome": "failed", "group": None, "reason": "boom"},
        {"nodeid": "c", "outcome": "passed", "group": None, "reason": ""},  # a teardown line must not hide it
    ]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"nodeid": "torn')  # the kill's torn line
    folded = fold(read(path))
    assert folded["counts"] == {"tests": 3, "passed": 1, "failed": 1, "skipped": 1}
    assert folded["benchmarks"] == [row] and folded["failures"] == ["c: boom"]
    assert folded["groups_planned"] == ["dfe-x-b2-fwd", "dfe-y-b2-fwd"] and folded["groups_measured"] == [
        "dfe-x-b2-fwd"
    ]
    assert folded["fallbacks"] == {"CUDA graphs skipped": 1}
    assert read(tmp_path / "missing.jsonl") == []


def test_goal_counts_its_cases_k_of_n() -> None:
    goal = _goal("DFE >= 1.5x eager")
    rows = [_row("dfe-a-b64-fwd", "eager", 3.0), _row("dfe-a-b64-fwd", "triton", 1.0)]
    verdict = judge(goal, rows, "unused", planned=["dfe-a-b64-fwd", "dfe-b-b64-fwd", "window_attention-s-b64"])
    assert verdict["cases"] == "1 of 2" and verdict["status"].startswith("holds on the 1 of 2 groups measured")
    assert judge(goal, rows, "unused", planned=["dfe-a-b64-fwd"])["status"] == "holds"


def test_summary_shows_each_kernel_against_its_roofline_bound(tmp_path: Path) -> None:
    from bench.goals import roofline_table

    report = tmp_path / "roofline.json"
    report.write_text(json.dumps({"groups": {"window_attention-s-b64-fwd+bwd": 50.0}}))
    rows = [_row("window_attention-s-b64-fwd+bwd", "triton", 0.2), _row("window_attention-s-b64-fwd+bwd", "eager", 1)]
    lines = roofline_table(rows, report)
    assert "| window_attention-s-b64-fwd+bwd | 200.0 | 50.0 | 25.0 % |" in lines
    assert roofline_table(rows, tmp_path / "missing.json") == []


def test_sanitizer_is_found_off_path_and_its_outcomes_are_told_apart(tmp_path: Path) -> None:
    from bench import sanitizer

    tool = tmp_path / "cuda-12.4" / "bin" / "compute-sanitizer"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    environ = {"PATH": str(tmp_path / "empty"), "CUDA_HOME": str(tmp_path / "cuda-12.4")}
    assert sanitizer.find(environ) == str(tool)
    assert "/usr/local/cuda/bin/compute-sanitizer" in sanitizer.candidates(environ)
    cmd = sanitizer.command("cs", "memcheck", tmp_path / "log", ["python", "-m", "x"], [])
    assert cmd[cmd.index("--report-api-errors") + 1] == "no" and sanitizer.TOOL_FLOOR_S >= 60
    assert sanitizer.verdict(0, "========= ERROR SUMMARY: 0 errors", 5) == "ok"
    found = "========= Invalid __global__ read of size 4 bytes\n========= ERROR SUMMARY: 2 errors"
    assert sanitizer.verdict(99, found, 5).startswith("failed: 2 error(s) reported (Invalid __global__ read")
    refused = "========= Error: Device not supported. Unable to start the target"
    assert sanitizer.verdict(1, refused, 5).startswith("could not run: Error: Device not supported")
    assert sanitizer.verdict(None, "", 61).startswith("could not run: timed out after 61 s")
    assert sanitizer.step_status({"memcheck": "ok", "racecheck": "could not run: x"}) == "could not run"
    assert sanitizer.step_status({"memcheck": "failed: 1", "racecheck": "ok"}) == "failed"


def test_a_missing_data_folder_fails_before_any_step(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bench.gpu_suite", "--dry-run", "--out", str(tmp_path / "o")]
    done = subprocess.run([*cmd, "--data", str(tmp_path / "nowhere")], cwd=REPO, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 2 and not (tmp_path / "o").exists()
    assert f"--data {tmp_path / 'nowhere'}: no such folder" in done.stderr


@pytest.mark.slow
def test_a_step_killed_by_the_watchdog_keeps_the_cases_it_measured(tmp_path: Path) -> None:
    """The kernels step's pytest hangs after its second recorded test (as a step that overruns would), the
    watchdog kills it before pytest-benchmark writes anything; the cases recorded before the kill are kept."""
    out = tmp_path / "suite"
    cmd = [sys.executable, "-m", "bench.gpu_suite", "--dry-run", "--out", str(out), "--only", "kernels",
           "--budget-min", "0.5", "--hard-limit-min", "2"]  # fmt: skip
    env = {**os.environ, "FASTMTL_RECORD_HANG_AFTER": "2", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # a step timed out
    step = json.loads((out / "suite.json").read_text())["steps"]["kernels"]
    assert step["status"] == "timed out" and step["kept_from_record"], step
    assert step["counts"]["tests"] == 2 and step["measured"] >= 1 and "killed: kept the" in step["reason"]
    kept = json.loads((out / "kernels.json").read_text())
    assert len(kept["benchmarks"]) == step["measured"] and kept["machine_info"]["fastmtl"]["kept_from_record"]
    assert all(b["extra_info"]["kernels"] in ("triton", "reference", "none") for b in kept["benchmarks"])
    assert not list(out.glob("*.jsonl"))  # folded into the step, not left as a ninth file
    summary = (out / "summary.md").read_text()
    assert "| kernels | timed out |" in summary and f"{step['measured']} of 2 measured" in summary


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
    assert list(steps) == ["env", "kernels", "model", "paper", "correctness", "sanitizer"]  # ordered by value
    assert steps["correctness"]["status"] == "ok" and steps["correctness"]["counts"]["tests"] > 0
    assert steps["sanitizer"]["status"] == "skipped" and "no CUDA" in steps["sanitizer"]["reason"]
    assert steps["kernels"]["measured"] > 0 and steps["model"]["measured"] > 0
    if not SHARED_ISIC.is_dir():  # a user's clone: the paper step needs --data
        assert steps["paper"]["status"] == "skipped"
    else:
        assert steps["paper"]["status"] == "ok", steps["paper"]
        assert json.loads((out / "paper.json").read_text())["epochs_done"] >= 1
    summary = (out / "summary.md").read_text()
    assert "dry run" in summary and "tests (passed / failed / skipped)" in summary and "fallbacks" in summary
    for goal in GOALS:
        assert goal.name in summary
    for name in ("kernels", "model"):
        counts = steps[name]["counts"]
        assert f"| {counts['tests']} ({counts['passed']} / {counts['failed']} / {counts['skipped']}) |" in summary
        assert steps[name]["cases"] == f"{steps[name]['measured']} of {counts['tests']} measured"
    kernels = json.loads((out / "kernels.json").read_text())
    providers = {b["extra_info"]["provider"] for b in kernels["benchmarks"]}
    assert {"triton", "eager"} <= providers  # the kernels ran (interpreter) next to their baselines
    model = json.loads((out / "model.json").read_text())["benchmarks"]
    assert all(
        b["extra_info"]["kernels"] in ("reference", "none") for b in model if b["extra_info"]["provider"] != "fastmtl"
    )

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
