"""The GPU suite's goals, judged from its result files: one Markdown table, goal by goal.

Each goal is a ratio of two providers measured in the same run (same process, same device, same shapes), taken
per benchmark group; a goal holds when its worst group reaches the target. A goal with no measured group says why
(the step failed, was cut short by its budget, or never ran on this device).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.benchmarks import group_benchmarks, median_s, provider_of


@dataclass(frozen=True)
class Goal:
    """``fast`` is at least ``target`` times faster than ``base`` in every group whose name has ``groups``."""

    name: str
    source: str  # result file stem: kernels / model
    groups: tuple[str, ...]  # substrings a group name must all contain
    fast: str
    base: str
    target: float


GOALS = (
    Goal("DFE >= 1.5x eager (cuDNN)", "kernels", ("dfe-",), "triton", "eager", 1.5),
    Goal("DFE >= 1.2x compiled", "kernels", ("dfe-",), "triton", "compiled", 1.2),
    Goal("window attention fwd+bwd >= 3x eager", "kernels", ("window_attention", "fwd+bwd"), "triton", "eager", 3.0),
    Goal(
        "window attention fwd+bwd >= 1.3x FlexAttention",
        "kernels",
        ("window_attention", "fwd+bwd"),
        "triton",
        "flex",
        1.3,
    ),
    Goal("inference 224 px b64 >= 3x eager autocast", "model", ("infer-224px-b64",), "fastmtl", "autocast-bf16", 3.0),
    Goal("inference 224 px b64 >= 1.5x compiled", "model", ("infer-224px-b64",), "fastmtl", "compile-bf16", 1.5),
    Goal("training step >= 1.3x compiled", "model", ("train-224px",), "fastmtl", "compile-bf16", 1.3),
)
PAPER_TARGET_MIN = 9.0
# Each kernel launch's lower bound on an H100 SXM (python -m fastmtl.kernel_report --report, fastmtl.kernels.roofline)
ROOFLINE = Path(__file__).resolve().parent / "results" / "roofline" / "h100-sxm.json"


def load_benchmarks(path: Path) -> list[dict[str, Any]]:
    """The benchmark rows of a pytest-benchmark JSON, [] when the file is missing or unreadable."""
    try:
        return json.loads(path.read_text())["benchmarks"]
    except (OSError, ValueError, KeyError):
        return []


def ratios(benchmarks: list[dict[str, Any]], goal: Goal) -> dict[str, float]:
    """base time / fast time per group that has both providers."""
    out = {}
    for group, rows in group_benchmarks(benchmarks).items():
        if not all(part in group for part in goal.groups):
            continue
        times = {provider_of(r): median_s(r) for r in rows}
        fast, base = times.get(goal.fast), times.get(goal.base)
        if fast and base:
            out[group] = base / fast
    return out


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def judge(
    goal: Goal, benchmarks: list[dict[str, Any]], why_missing: str, dry_run: bool = False, planned: list[str] = ()
) -> dict[str, Any]:
    """{goal, target, status, cases, worst, worst_group, geomean, groups} for one goal; a dry run's ratios are not
    judged. ``planned``: the benchmark groups the step collected; ``cases`` says how many of the goal's groups
    have both providers measured ("k of n"), and a goal holds only when all n were."""
    found = ratios(benchmarks, goal)
    wanted = {g for g in [*planned, *group_benchmarks(benchmarks)] if all(part in g for part in goal.groups)}
    n = max(len(wanted), len(found))
    row: dict[str, Any] = {"goal": goal.name, "target": goal.target, "groups": found, "cases": f"{len(found)} of {n}"}
    if not found:
        return {**row, "status": f"not measured: {why_missing}"}
    worst_group = min(found, key=found.get)
    below = sum(v < goal.target for v in found.values())
    status = "holds" if not below else f"misses ({below} of {len(found)} groups below)"
    if not below and len(found) < n:
        status = f"holds on the {len(found)} of {n} groups measured (not judged on the rest)"
    if dry_run:
        status = "not judged: a dry run (CPU, interpreter)"
    return {
        **row,
        "status": status,
        "worst": found[worst_group],
        "worst_group": worst_group,
        "geomean": _geomean(list(found.values())),
    }


def judge_paper(paper: dict[str, Any] | None, why_missing: str, dry_run: bool = False) -> dict[str, Any]:
    row: dict[str, Any] = {
        "goal": f"paper protocol (150 epochs) <= {PAPER_TARGET_MIN:g} min",
        "target": PAPER_TARGET_MIN,
        "cases": "1 of 1" if (paper or {}).get("projected_150_epochs_min") is not None else "0 of 1",
    }
    projected = (paper or {}).get("projected_150_epochs_min")
    if projected is None:
        return {**row, "status": f"not measured: {why_missing}"}
    status = "holds" if projected <= PAPER_TARGET_MIN else "misses"
    if dry_run:
        status = "not judged: a dry run (CPU, tiny run)"
    return {
        **row,
        "status": status,
        "projected_min": projected,
        "images_per_s": paper.get("train_images_per_s"),
        "epochs_done": paper.get("epochs_done"),
        "rate_from": paper.get("rate_from"),
    }


def judge_all(out: Path, steps: dict[str, dict[str, Any]], dry_run: bool = False) -> list[dict[str, Any]]:
    """Every goal judged from ``out``'s result files; ``steps`` (name -> record) explains what is missing."""

    def why(step: str) -> str:
        rec = steps.get(step)
        if rec is None:
            return f"step {step} did not run in this invocation"
        return f"step {step} {rec['status']}" + (f" ({rec['reason']})" if rec.get("reason") else "")

    def planned(source: str) -> list[str]:
        return steps.get(source, {}).get("groups_planned", [])

    rows = [
        judge(g, load_benchmarks(out / f"{g.source}.json"), why(g.source), dry_run, planned(g.source)) for g in GOALS
    ]
    paper = None
    if (out / "paper.json").is_file():
        paper = json.loads((out / "paper.json").read_text())
    rows.append(judge_paper(paper, why("paper"), dry_run))
    return rows


def _cell(row: dict[str, Any]) -> str:
    if "worst" in row:
        return (
            f"{row['worst']:.3g}x worst ({row['worst_group']}), {row['geomean']:.3g}x geomean of {len(row['groups'])}"
        )
    if "projected_min" in row:
        return f"{row['projected_min']:.1f} min projected ({row['images_per_s'] or 0:.1f} training images/s steady)"
    return "-"


def markdown(
    rows: list[dict[str, Any]], steps: dict[str, dict[str, Any]], env: dict[str, Any], kernels: list | None = None
) -> str:
    gpu = (env.get("gpu") or {}).get("name") or f"no GPU ({env.get('cpu_model', 'CPU')})"
    lines = [
        f"# GPU suite on {gpu}",
        "",
        f"torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda')}"
        + (
            " — **dry run** (CPU, tiny shapes: no number below says anything about a GPU)" if env.get("dry_run") else ""
        ),
        "",
        "| goal | measured | cases | status |",
        "| --- | --- | --- | --- |",
        *(f"| {r['goal']} | {_cell(r)} | {r.get('cases', '-')} | {r['status']} |" for r in rows),
        "",
        "| step | status | seconds | budget s | tests (passed / failed / skipped) | cases | fallbacks | note |",
        "| --- | --- | ---: | ---: | --- | --- | --- | --- |",
        *(
            f"| {n} | {s['status']} | {s['seconds']:.0f} | {s['budget_s']:.0f} | {_counts(s)} | {s.get('cases', '-')} "
            f"| {_fallbacks(s)} | {s.get('reason', '')} |"
            for n, s in steps.items()
        ),
        "",
        *roofline_table(kernels or []),
    ]
    return "\n".join(lines)


def roofline_table(benchmarks: list[dict[str, Any]], roofline: Path = ROOFLINE) -> list[str]:
    """Markdown lines: each Triton kernel group's measured time as a percentage of its roofline lower bound (the
    committed H100 SXM report of :mod:`fastmtl.kernels.roofline`); [] without the report or a matching row."""
    try:
        bounds = json.loads(roofline.read_text())["groups"]
    except (OSError, ValueError, KeyError):
        return []
    rows = []
    for group, found in sorted(group_benchmarks(benchmarks).items()):
        fast = next((r for r in found if provider_of(r) == "triton"), None)
        if fast is None or group not in bounds or not median_s(fast):
            continue
        measured_us, bound = median_s(fast) * 1e6, bounds[group]
        rows.append(f"| {group} | {measured_us:.1f} | {bound:.1f} | {100 * bound / measured_us:.1f} % |")
    if not rows:
        return []
    head = ["| kernel group (Triton) | measured us | H100 SXM bound us | % of bound |", "| --- | ---: | ---: | ---: |"]
    return [f"Kernels against their roofline lower bound ({roofline.name}):", "", *head, *rows, ""]


def _counts(step: dict[str, Any]) -> str:
    c = step.get("counts")
    return f"{c['tests']} ({c['passed']} / {c['failed']} / {c['skipped']})" if c else "-"


def _fallbacks(step: dict[str, Any]) -> str:
    found = step.get("fallbacks")
    if found is None:
        return "-"
    return "; ".join(f"{k} (x{v})" for k, v in found.items()) or "none"
