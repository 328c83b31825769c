"""pytest-benchmark JSON as the report (:mod:`bench.report`) and the GPU suite read it: loading and merging files, each
benchmark's provider and median, the groups and suites, the speedups against the eager and compiled baselines, and
the number that stands for a benchmark (its throughput, else ms per call)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "COMPILED",
    "EAGER",
    "THROUGHPUT",
    "add_speedups",
    "group_benchmarks",
    "headline",
    "is_accuracy",
    "load",
    "median_s",
    "ordered_providers",
    "provider_of",
    "suite_of",
    "throughput_key",
]

EAGER = ("eager", "eager-fp32", "torch", "pytorch", "reference", "ref")
COMPILED = ("compile", "compiled", "torch-compile", "torch_compile", "inductor")
# (extra_info key, column label, higher is better)
THROUGHPUT = (("images_per_s", "images/s", True), ("gbps", "GB/s", True), ("tflops", "TFLOP/s", True))


def provider_of(bench: dict[str, Any]) -> str:
    """The provider of a benchmark: extra_info, then the ``provider``/``backend`` parameter, then the test id."""
    info, params = bench.get("extra_info") or {}, bench.get("params") or {}
    for value in (info.get("provider"), params.get("provider"), params.get("backend")):
        if value:
            return str(value)
    match = re.search(r"\[(.*)\]$", bench.get("name", ""))
    return match.group(1) if match else bench.get("name", "?")


def median_s(bench: dict[str, Any]) -> float | None:
    stats = bench.get("stats") or {}
    value = stats.get("median")
    if value is None and "ms" in (bench.get("extra_info") or {}):
        value = bench["extra_info"]["ms"] / 1e3
    return value


def _baseline(benches: list[dict[str, Any]], names: tuple[str, ...]) -> float | None:
    times = [median_s(b) for b in benches if provider_of(b) in names and median_s(b)]
    return min(times) if times else None


def add_speedups(benchmarks: list[dict[str, Any]]) -> None:
    """Adds ``speedup_vs_eager`` / ``speedup_vs_compiled`` (baseline median / own median) within each group.

    Values a benchmark already carries (computed by its own test) are kept.
    """
    for benches in group_benchmarks(benchmarks).values():
        for key, names in (("speedup_vs_eager", EAGER), ("speedup_vs_compiled", COMPILED)):
            base = _baseline(benches, names)
            for b in benches:
                own = median_s(b)
                info = b.setdefault("extra_info", {})
                if base and own and key not in info:
                    info[key] = base / own


def group_benchmarks(benchmarks: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for b in benchmarks:
        groups.setdefault(b.get("group") or b.get("name", "?"), []).append(b)
    return groups


def suite_of(group: str) -> str:
    return group.split("-", 1)[0]


def throughput_key(benches: list[dict[str, Any]]) -> tuple[str, str, bool] | None:
    for key, label, higher in THROUGHPUT:
        if all(key in (b.get("extra_info") or {}) for b in benches):
            return key, label, higher
    return None


def ordered_providers(benches: Iterable[dict[str, Any]]) -> list[str]:
    """Providers in order of first appearance, baselines first."""
    seen = list(dict.fromkeys(provider_of(b) for b in benches))
    return sorted(seen, key=lambda p: (p not in EAGER, p not in COMPILED, seen.index(p)))


def headline(b: dict[str, Any], tp: tuple[str, str, bool] | None) -> float | None:
    """The number a summary cell shows: the throughput, else ms per call."""
    if tp:
        return (b.get("extra_info") or {}).get(tp[0])
    m = median_s(b)
    return None if m is None else m * 1e3


def is_accuracy(bench: dict[str, Any]) -> bool:
    info = bench.get("extra_info") or {}
    return "dsc" in info or "auc_mean" in info


def load(paths: Iterable[str | Path]) -> dict[str, Any]:
    """Reads one or more JSON files; benchmarks are concatenated, machine info taken from the first."""
    merged: dict[str, Any] = {"benchmarks": []}
    for path in paths:
        data = json.loads(Path(path).read_text())
        merged.setdefault("machine_info", data.get("machine_info"))
        merged.setdefault("datetime", data.get("datetime"))
        merged["benchmarks"].extend(data.get("benchmarks", []))
    add_speedups(merged["benchmarks"])
    return merged
