"""One run's report and two runs compared, as Markdown (and PNG plots with an output folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.benchmarks import group_benchmarks, headline, is_accuracy, provider_of, suite_of, throughput_key
from bench.plots import plot_compare, plot_suite, safe_name
from bench.tables import (
    ACCURACY,
    AOT_KEYS,
    accuracy_table,
    aot_rows,
    fmt,
    group_table,
    machine_line,
    markdown_table,
    precision_sections,
    suite_summary,
)

__all__ = ["compare", "label", "render"]


def render(data: dict[str, Any], out_dir: Path | None = None) -> str:
    """Markdown for one run; with ``out_dir``, also ``<suite>.png`` bar plots there."""
    groups = group_benchmarks(b for b in data["benchmarks"] if not is_accuracy(b))
    lines = [f"_{machine_line(data)}; {data.get('datetime') or ''}_", ""]
    suites: dict[str, dict[str, list]] = {}
    for group, benches in groups.items():
        suites.setdefault(suite_of(group), {})[group] = benches
    for suite, sgroups in suites.items():
        lines += [f"### {suite}", "", suite_summary(sgroups), "", *precision_sections(sgroups)]
        if out_dir is not None:
            png = plot_suite(suite, sgroups, out_dir / f"{safe_name(suite)}.png")
            lines += [f"![{suite}]({png.name})", ""]
    lines += ["<details><summary>Per-group tables</summary>", ""]
    for group, benches in groups.items():
        lines += [f"#### {group}", "", group_table(benches), ""]
    lines += ["</details>", ""]
    accuracy = [b for b in data["benchmarks"] if is_accuracy(b)]
    if accuracy:
        lines += ["### accuracy", "", accuracy_table(accuracy), ""]
    aot = aot_rows(data["benchmarks"])
    if aot:
        lines += ["### AOT kernel compile stats", "", markdown_table(["benchmark", "kernel", *AOT_KEYS], aot), ""]
    return "\n".join(lines)


def _keyed(data: dict[str, Any], accuracy: bool = False) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (b.get("group") or b.get("name", "?"), provider_of(b)): b
        for b in data["benchmarks"]
        if is_accuracy(b) == accuracy
    }


def _compare_accuracy(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Accuracy runs of both files: one row per (group, provider, metric)."""
    ka, kb = _keyed(a, accuracy=True), _keyed(b, accuracy=True)
    rows = []
    for key in dict.fromkeys([*ka, *kb]):
        ia, ib = ((x or {}).get("extra_info") or {} for x in (ka.get(key), kb.get(key)))
        for metric, _ in ACCURACY:
            if metric in ia or metric in ib:
                rows.append([*key, metric, fmt(ia.get(metric), 4), fmt(ib.get(metric), 4)])
    if not rows:
        return []
    return ["### accuracy", "", markdown_table(["group", "provider", "metric", "A", "B"], rows), ""]


def label(data: dict[str, Any], path: str | Path) -> str:
    return ((data.get("machine_info") or {}).get("fastmtl") or {}).get("device_slug") or Path(path).stem


def compare(a: dict[str, Any], b: dict[str, Any], labels: tuple[str, str], out_dir: Path | None = None) -> str:
    """Two runs side by side: per suite, one row per (group, provider) with both values and B's speedup over A."""
    ka, kb = _keyed(a), _keyed(b)
    keys = list(dict.fromkeys([*ka, *kb]))
    lines = [f"A = `{labels[0]}`: _{machine_line(a)}_", "", f"B = `{labels[1]}`: _{machine_line(b)}_", ""]
    for suite in dict.fromkeys(suite_of(g) for g, _ in keys):
        rows, names, series = [], [], {"A": [], "B": []}
        for group, provider in (k for k in keys if suite_of(k[0]) == suite):
            pair = [ka.get((group, provider)), kb.get((group, provider))]
            tp = throughput_key([x for x in pair if x is not None])
            va, vb = (None if x is None else headline(x, tp) for x in pair)
            ratio = None
            if va and vb:
                ratio = vb / va if tp else va / vb  # > 1: B is faster
            unit = tp[1] if tp else "ms"
            speed = "-" if ratio is None else f"{ratio:.2f}x"
            rows.append([group, provider, unit, fmt(va), fmt(vb), speed])
            names.append(f"{group} {provider}")
            series["A"].append(va)
            series["B"].append(vb)
        lines += [f"### {suite}", "", markdown_table(["group", "provider", "unit", "A", "B", "B vs A"], rows), ""]
        if out_dir is not None:
            path = plot_compare(suite, names, {labels[0]: series["A"], labels[1]: series["B"]}, out_dir)
            lines += [f"![compare {suite}]({path.name})", ""]
    return "\n".join(lines + _compare_accuracy(a, b))
