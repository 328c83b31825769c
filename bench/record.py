"""Results kept as they come: a pytest plugin (``-p bench.record``) and the reader that folds its file into a step.

With ``FASTMTL_RECORD`` naming a file, every test appends one JSON line to it the moment it finishes: node id,
outcome (passed / failed / skipped), seconds, the skip or failure reason, its benchmark group, and, for a
benchmark, the row as pytest-benchmark's JSON will hold it (:func:`record_benchmark`, called by the ``measure``
fixture) with the fallbacks seen while it ran. pytest-benchmark's JSON and the junit XML are written only when
the session ends; a step that the GPU suite's watchdog kills keeps, through this file, every case it finished.

``FASTMTL_RECORD_HANG_AFTER=N`` (fault injection for the suite's test): after the N-th line the test process
sleeps until it is killed, as a step that overran its budget would be.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

ENV = "FASTMTL_RECORD"
HANG_ENV = "FASTMTL_RECORD_HANG_AFTER"
_written = Counter()


def record_benchmark(item: pytest.Item, row: dict[str, Any]) -> None:
    """Attaches a finished benchmark's row (pytest-benchmark's format) to the test's record line."""
    item.user_properties.append(("benchmark", row))


def record_group(item: pytest.Item, group: str) -> None:
    """Names the benchmark group of a test before it may skip, so that a goal counts its planned cases."""
    item.user_properties.append(("group", group))


def _reason(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    if report.failed:
        text = getattr(report, "longreprtext", "") or str(report.longrepr)
        lines = [line for line in text.splitlines() if line.startswith("E ")] or text.splitlines()[-1:]
        return " ".join(line.removeprefix("E ").strip() for line in lines[:3])[:500]
    return ""


def _line(report: pytest.TestReport) -> dict[str, Any]:
    props = dict(report.user_properties)
    line = {
        "nodeid": report.nodeid,
        "outcome": report.outcome,
        "when": report.when,
        "seconds": round(report.duration, 3),
        "reason": _reason(report),
        "group": props.get("group"),
        "time": time.time(),
    }
    if "benchmark" in props and report.passed:
        line["benchmark"] = props["benchmark"]
    return line


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    final = report.when == "call" or (report.when == "setup" and not report.passed)
    final = final or (report.when == "teardown" and report.failed)
    if not final:
        return
    with open(path, "a", encoding="utf-8") as f:  # one short append per test: what a kill leaves is whole lines
        f.write(json.dumps(_line(report), default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    _written[path] += 1
    hang = int(os.environ.get(HANG_ENV) or 0)
    if hang and _written[path] >= hang:
        while True:  # a step that overruns: only the watchdog ends it
            time.sleep(60)


def read(path: Path) -> list[dict[str, Any]]:
    """The record lines of ``path`` (a torn last line from a kill is dropped); [] when it does not exist."""
    lines = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    for raw in text.splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue
    return lines


def fold(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """What a step's record says: test counts, the benchmark rows, the groups planned and measured (k of n) and
    the fallbacks."""
    last: dict[str, dict[str, Any]] = {}
    for line in lines:
        previous = last.get(line["nodeid"])
        if previous is None or previous["outcome"] != "failed":  # a failed teardown keeps the test failed
            last[line["nodeid"]] = line
    counts = Counter(line["outcome"] for line in last.values())
    rows = [line["benchmark"] for line in last.values() if "benchmark" in line]
    planned = {line["group"] for line in last.values() if line.get("group")}
    measured = {row.get("group") for row in rows}
    fallbacks = Counter(f for row in rows for f in row.get("extra_info", {}).get("fallbacks", []))
    return {
        "counts": {
            "tests": len(last),
            "passed": counts["passed"],
            "failed": counts["failed"],
            "skipped": counts["skipped"],
        },  # fmt: skip
        "benchmarks": rows,
        "groups_planned": sorted(planned | measured),
        "groups_measured": sorted(measured),
        "fallbacks": dict(fallbacks),
        "failures": [f"{line['nodeid']}: {line['reason']}" for line in last.values() if line["outcome"] == "failed"],
    }
