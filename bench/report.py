"""Markdown tables and PNG bar plots from pytest-benchmark JSON files.

Usage::

    python -m bench.report out.json [more.json ...] [--out DIR]
    python -m bench.report --compare a.json b.json [--out DIR]
    python -m bench.report --readme bench/results

For each group (``benchmark.group``), one table with the providers as columns and, as rows, the throughput
(images/s when recorded, else GB/s or TFLOP/s), ms per call and the speedups vs eager and vs compiled PyTorch;
a summary table per suite (the group's first ``-`` field: ``infer``, ``train``, ...) with one row per group; AOT
kernel compile stats (extra_info dicts with ``n_regs``) when present; a bar plot per suite (``<suite>.png``).
``--compare`` puts two runs side by side (B / A ratio per group and provider) and plots both.
The Markdown goes to stdout and to ``DIR/report.md``; the PNGs to ``DIR`` (default ``bench-report``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

EAGER = ("eager", "eager-fp32", "torch", "pytorch", "reference", "ref")
COMPILED = ("compile", "compiled", "torch-compile", "torch_compile", "inductor")
# (extra_info key, column label, higher is better)
THROUGHPUT = (("images_per_s", "images/s", True), ("gbps", "GB/s", True), ("tflops", "TFLOP/s", True))
ACCURACY = (("img_size", "img"), ("steps", "steps"), ("n_images", "images"), ("wall_s", "wall s"), ("dsc", "DSC %"),
            ("ji", "JI %"), ("global_dice", "global Dice %"), ("auc_mean", "AUC %"), ("acc", "Acc %"),
            ("sen", "Sen %"), ("spe", "Spe %"))  # fmt: skip
# The CPU precision group (bench/test_cpu_precision.py): speed next to the agreement with fp32 and the DSC change.
PRECISION = (("images_per_s", "images/s"), ("speedup_vs_eager", "x eager"), ("vs_fp32_mask_dsc", "mask DSC vs fp32 %"),
             ("vs_fp32_mask_agreement", "pixels equal %"), ("vs_fp32_prob_mean_abs", "mean abs dp"),
             ("vs_fp32_prob_max_abs", "max abs dp"), ("dsc_gt_delta", "DSC change (points)"),
             ("accuracy_images", "images"))  # fmt: skip
AOT_KEYS = ("arch", "n_regs", "n_spills", "shared", "num_warps", "has_tensor_cores")


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


def _throughput_key(benches: list[dict[str, Any]]) -> tuple[str, str, bool] | None:
    for key, label, higher in THROUGHPUT:
        if all(key in (b.get("extra_info") or {}) for b in benches):
            return key, label, higher
    return None


def _providers(benches: Iterable[dict[str, Any]]) -> list[str]:
    """Providers in order of first appearance, baselines first."""
    seen = list(dict.fromkeys(provider_of(b) for b in benches))
    return sorted(seen, key=lambda p: (p not in EAGER, p not in COMPILED, seen.index(p)))


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def group_table(benches: list[dict[str, Any]]) -> str:
    """One group: providers as columns; throughput, ms, TFLOP/s, peak memory and speedups as rows."""
    providers = _providers(benches)
    by_provider = {provider_of(b): b for b in benches}
    tp = _throughput_key(benches)
    rows_spec = ([(tp[0], tp[1])] if tp else []) + [("images_per_cpu_s", "images/CPU-s"), ("ms", "ms / call")]
    if tp is None or tp[0] != "tflops":
        rows_spec.append(("tflops", "TFLOP/s"))
    rows_spec += [("peak_mem_mib", "peak MiB"), ("speedup_vs_eager", "x eager"), ("speedup_vs_compiled", "x compiled")]
    rows = []
    for key, label in rows_spec:
        cells = []
        for p in providers:
            info = by_provider[p].get("extra_info") or {}
            value = info.get(key)
            if key == "ms" and value is None and median_s(by_provider[p]):
                value = median_s(by_provider[p]) * 1e3
            cells.append(f"{value:.2f}x" if key.startswith("speedup") and value is not None else _fmt(value))
        if any(c != "-" for c in cells):
            rows.append([label, *cells])
    return _table(["metric", *providers], rows)


def _headline(b: dict[str, Any], tp: tuple[str, str, bool] | None) -> float | None:
    """The number a summary cell shows: the throughput, else ms per call."""
    if tp:
        return (b.get("extra_info") or {}).get(tp[0])
    m = median_s(b)
    return None if m is None else m * 1e3


def suite_summary(groups: dict[str, list[dict[str, Any]]]) -> str:
    """One row per group, one column per provider: throughput (or ms) and the speedup vs eager."""
    providers = _providers(b for benches in groups.values() for b in benches)
    rows = []
    for group, benches in groups.items():
        tp = _throughput_key(benches)
        by_provider = {provider_of(b): b for b in benches}
        cells = []
        for p in providers:
            b = by_provider.get(p)
            if b is None:
                cells.append("")
                continue
            speed = (b.get("extra_info") or {}).get("speedup_vs_eager")
            text = _fmt(_headline(b, tp))
            cells.append(text if speed is None or p in EAGER else f"{text} ({speed:.2f}x)")
        unit = tp[1] if tp else "ms"
        rows.append([f"{group} [{unit}]", *cells])
    return _table(["group", *providers], rows)


def aot_rows(benchmarks: Iterable[dict[str, Any]]) -> list[list[str]]:
    """Rows of AOT kernel compile stats: extra_info dicts (or lists of dicts) holding ``n_regs``."""
    rows = []
    for b in benchmarks:
        info = b.get("extra_info") or {}
        items = [("", info)] if "n_regs" in info else []
        for key, value in info.items():
            for entry in value if isinstance(value, list) else [value]:
                if isinstance(entry, dict) and "n_regs" in entry:
                    items.append((entry.get("kernel", key), entry))
        for kernel, stats in items:
            rows.append([b.get("name", "?"), str(kernel), *(str(stats.get(k, "-")) for k in AOT_KEYS)])
    return rows


def is_accuracy(bench: dict[str, Any]) -> bool:
    info = bench.get("extra_info") or {}
    return "dsc" in info or "auc_mean" in info


def accuracy_table(benches: list[dict[str, Any]]) -> str:
    """Accuracy runs: metrics in percent next to the wall time."""
    rows = []
    for b in benches:
        info = b.get("extra_info") or {}
        info = {"n_images": info.get("val_images"), **info}  # a training run reports its validation images
        rows.append([b.get("group", "?"), provider_of(b), *(_fmt(info.get(k), 4) for k, _ in ACCURACY)])
    return _table(["group", "provider", *(label for _, label in ACCURACY)], rows)


def precision_table(benches: list[dict[str, Any]]) -> str:
    """A ``cpu-precision`` group: one row per path with its speed and its agreement with eager fp32."""
    rows, notes, weights = [], [], {(b.get("extra_info") or {}).get("weights") for b in benches} - {None}
    for b in benches:
        info = b.get("extra_info") or {}
        cells = [
            f"{info[k]:.2f}x" if k == "speedup_vs_eager" and k in info else _fmt(info.get(k), 4) for k, _ in PRECISION
        ]
        rows.append([provider_of(b), *cells])
        if info.get("auto_choice"):
            notes.append(f"auto chose {info['auto_choice']}")
    notes = [f"Weights: {'; '.join(sorted(weights))}.", *notes] if weights else notes
    kinds = {(b.get("extra_info") or {}).get("cpu_kind") for b in benches} - {None}
    notes = [f"CPU kind: {'; '.join(sorted(kinds))}.", *notes] if kinds else notes
    return "\n\n".join([_table(["path", *(label for _, label in PRECISION)], rows), *notes])


def _precision_sections(groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = []
    for group, benches in groups.items():
        if group.startswith("cpu-precision"):
            lines += [f"{group}:", "", precision_table(benches), ""]
    return lines


def machine_line(data: dict[str, Any]) -> str:
    m = data.get("machine_info") or {}
    f = m.get("fastmtl") or {}
    gpu = (f.get("gpu") or {}).get("name")
    parts = [
        f"device: {gpu or f.get('cpu_model') or m.get('cpu', {}).get('brand_raw', '?')}",
        f"threads: {f.get('torch_threads', '?')}",
        f"torch {f.get('torch', '?')}",
        f"triton {f.get('triton') or '-'}",
        f"CUDA {f.get('cuda') or '-'}",
    ]
    if gpu:
        g = f["gpu"]
        parts.append(f"driver {g.get('driver', '?')}, max SM clock {g.get('max_sm_clock_mhz', '?')} MHz")
    if f.get("load_avg_start") is not None:
        parts.append(f"load avg at start/end {f.get('load_avg_start')} / {f.get('load_avg_end')}")
    if f.get("wall_s") is not None:
        parts.append(f"suite wall time {f['wall_s']:.0f} s")
    if f.get("bench_quick"):
        parts.append("QUICK shapes")
    return "; ".join(parts)


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


def render(data: dict[str, Any], out_dir: Path | None = None) -> str:
    """Markdown for one run; with ``out_dir``, also ``<suite>.png`` bar plots there."""
    groups = group_benchmarks(b for b in data["benchmarks"] if not is_accuracy(b))
    lines = [f"_{machine_line(data)}; {data.get('datetime') or ''}_", ""]
    suites: dict[str, dict[str, list]] = {}
    for group, benches in groups.items():
        suites.setdefault(suite_of(group), {})[group] = benches
    for suite, sgroups in suites.items():
        lines += [f"### {suite}", "", suite_summary(sgroups), "", *_precision_sections(sgroups)]
        if out_dir is not None:
            png = plot_suite(suite, sgroups, out_dir / f"{_safe(suite)}.png")
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
        lines += ["### AOT kernel compile stats", "", _table(["benchmark", "kernel", *AOT_KEYS], aot), ""]
    return "\n".join(lines)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _bars(ax, labels: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, [math.nan if v is None else v for v in values], width, label=name)  # NaN: no bar
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")  # outside: never hides a bar
    ax.grid(axis="y", alpha=0.3)


def _figure(n_labels: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(7.0, 1.2 * n_labels + 4), 4.5))
    return plt, fig, ax


def plot_suite(suite: str, groups: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Grouped bar plot: one cluster per group, one bar per provider (throughput, else ms)."""
    providers = _providers(b for benches in groups.values() for b in benches)
    labels = list(groups)
    units = {(_throughput_key(benches) or ("", "ms", False))[1] for benches in groups.values()}
    series = {}
    for p in providers:
        values = []
        for benches in groups.values():
            b = next((x for x in benches if provider_of(x) == p), None)
            values.append(None if b is None else _headline(b, _throughput_key(benches)))
        series[p] = values
    plt, fig, ax = _figure(len(labels))
    _bars(ax, labels, series, " / ".join(sorted(units)))
    ax.set_title(f"{suite} (higher is better)" if "ms" not in units else suite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
                rows.append([*key, metric, _fmt(ia.get(metric), 4), _fmt(ib.get(metric), 4)])
    if not rows:
        return []
    return ["### accuracy", "", _table(["group", "provider", "metric", "A", "B"], rows), ""]


def _label(data: dict[str, Any], path: str | Path) -> str:
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
            tp = _throughput_key([x for x in pair if x is not None])
            va, vb = (None if x is None else _headline(x, tp) for x in pair)
            ratio = None
            if va and vb:
                ratio = vb / va if tp else va / vb  # > 1: B is faster
            unit = tp[1] if tp else "ms"
            speed = "-" if ratio is None else f"{ratio:.2f}x"
            rows.append([group, provider, unit, _fmt(va), _fmt(vb), speed])
            names.append(f"{group} {provider}")
            series["A"].append(va)
            series["B"].append(vb)
        lines += [f"### {suite}", "", _table(["group", "provider", "unit", "A", "B", "B vs A"], rows), ""]
        if out_dir is not None:
            plt, fig, ax = _figure(len(names))
            _bars(ax, names, {labels[0]: series["A"], labels[1]: series["B"]}, "throughput or ms")
            ax.set_title(f"{suite}: A vs B")
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"compare-{_safe(suite)}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            lines += [f"![compare {suite}]({path.name})", ""]
    return "\n".join(lines + _compare_accuracy(a, b))


README_HEAD = """# Benchmark results

Curated runs of `pytest bench/`, one JSON per device named `<device>-torch<version>[-triton<version>].json`
(the name is `machine_info.fastmtl.device_slug`). This page is generated: `python -m bench.report --readme
bench/results`. To add a device: run the suite there, copy the JSON here under its slug, regenerate.

    pytest bench/ --benchmark-json=out.json        # full suite (GPU main use; CPU subset on a CPU-only machine)
    python -m bench.report out.json --out report/   # Markdown + PNG bar plots
    python -m bench.report --compare a.json b.json  # two runs side by side

Cells: images/s (median round) and, in brackets, the speedup over eager fp32 PyTorch in the same group.
CPU runs come from a shared 2-core machine: each run's line gives the load average at its start and end, and the
per-group tables give images per CPU-second, which moves less than the wall clock when other jobs share the cores.
"""


def write_readme(folder: Path) -> str:
    """Renders every ``*.json`` in ``folder`` into ``<stem>/`` (PNGs) and ``README.md``, newest run first."""
    runs = [(load([p]), p) for p in sorted(folder.glob("*.json"))]
    runs.sort(key=lambda r: r[0].get("datetime") or "", reverse=True)
    sections = [README_HEAD]
    for data, path in runs:
        body = render(data, folder / path.stem)
        body = re.sub(r"!\[([^]]*)\]\(([^)]+)\)", rf"![\1]({path.stem}/\2)", body)
        sections += [f"## {path.stem}", "", f"From [`{path.name}`]({path.name}).", "", body]
    text = "\n".join(sections)
    (folder / "README.md").write_text(text)
    return text


README_START, README_END = "<!-- bench-results:start -->", "<!-- bench-results:end -->"


def performance_section(folder: Path) -> str:
    """Headline tables of every result file in ``folder`` (newest first), each labelled with its device."""
    runs = sorted((load([p]) | {"_path": p} for p in folder.glob("*.json")), key=lambda d: d.get("datetime") or "")
    lines = []
    for data in reversed(runs):
        path = data.pop("_path")
        groups = group_benchmarks(b for b in data["benchmarks"] if not is_accuracy(b))
        suites: dict[str, dict[str, list]] = {}
        for group, benches in groups.items():
            suites.setdefault(suite_of(group), {})[group] = benches
        lines += [f"**{path.stem}** ({machine_line(data)}; from `bench/results/{path.name}`)", ""]
        for suite, sgroups in suites.items():
            lines += [f"{suite}:", "", suite_summary(sgroups), "", *_precision_sections(sgroups)]
    return "\n".join(lines)


def update_readme(readme: Path, folder: Path) -> None:
    """Replaces the text between the bench-results markers of ``readme`` with :func:`performance_section`."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} markers")
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    readme.write_text(f"{head}{README_START}\n{performance_section(folder)}\n{README_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="*", help="pytest-benchmark JSON file(s) of one run")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two JSON files to show side by side")
    parser.add_argument("--out", default="bench-report", help="folder for report.md and the PNGs")
    parser.add_argument("--readme", metavar="DIR", help="render every JSON in DIR into DIR/README.md (bench/results)")
    parser.add_argument("--update-readme", metavar="FILE", help="with --readme: also refresh FILE's results section")
    args = parser.parse_args(argv)
    if args.readme:
        print(write_readme(Path(args.readme)))
        if args.update_readme:
            update_readme(Path(args.update_readme), Path(args.readme))
        return 0
    if not args.json and not args.compare:
        parser.error("give JSON file(s) to render, --compare A B, or --readme DIR")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    if args.json:
        parts.append(render(load(args.json), out_dir))
    if args.compare:
        a, b = load([args.compare[0]]), load([args.compare[1]])
        labels = (_label(a, args.compare[0]), _label(b, args.compare[1]))
        if labels[0] == labels[1]:
            labels = (f"{labels[0]} ({Path(args.compare[0]).name})", f"{labels[1]} ({Path(args.compare[1]).name})")
        parts.append(compare(a, b, labels, out_dir))
    text = "\n".join(parts)
    (out_dir / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
