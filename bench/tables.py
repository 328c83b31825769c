"""The Markdown tables of a benchmark report: a group's providers side by side, a suite's summary, the
accuracy runs, the CPU precision paths, the AOT kernel compile stats, and the line that names the machine."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from bench.benchmarks import EAGER, headline, median_s, ordered_providers, provider_of, throughput_key

__all__ = [
    "ACCURACY",
    "AOT_KEYS",
    "PRECISION",
    "accuracy_table",
    "aot_rows",
    "fmt",
    "group_table",
    "machine_line",
    "markdown_table",
    "precision_sections",
    "precision_table",
    "suite_summary",
]

ACCURACY = (("img_size", "img"), ("steps", "steps"), ("n_images", "images"), ("wall_s", "wall s"), ("dsc", "DSC %"),
            ("ji", "JI %"), ("global_dice", "global Dice %"), ("auc_mean", "AUC %"), ("acc", "Acc %"),
            ("sen", "Sen %"), ("spe", "Spe %"))  # fmt: skip
# The CPU precision group (bench/test_cpu_precision.py): speed next to the agreement with fp32 and the DSC change.
PRECISION = (("images_per_s", "images/s"), ("speedup_vs_eager", "x eager"), ("vs_fp32_mask_dsc", "mask DSC vs fp32 %"),
             ("vs_fp32_mask_agreement", "pixels equal %"), ("vs_fp32_prob_mean_abs", "mean abs dp"),
             ("vs_fp32_prob_max_abs", "max abs dp"), ("dsc_gt_delta", "DSC change (points)"),
             ("accuracy_images", "images"))  # fmt: skip
AOT_KEYS = ("arch", "n_regs", "n_spills", "shared", "num_warps", "has_tensor_cores")


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def group_table(benches: list[dict[str, Any]]) -> str:
    """One group: providers as columns; throughput, ms, TFLOP/s, peak memory and speedups as rows."""
    providers = ordered_providers(benches)
    by_provider = {provider_of(b): b for b in benches}
    tp = throughput_key(benches)
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
            cells.append(f"{value:.2f}x" if key.startswith("speedup") and value is not None else fmt(value))
        if any(c != "-" for c in cells):
            rows.append([label, *cells])
    return markdown_table(["metric", *providers], rows)


def suite_summary(groups: dict[str, list[dict[str, Any]]]) -> str:
    """One row per group, one column per provider: throughput (or ms) and the speedup vs eager."""
    providers = ordered_providers(b for benches in groups.values() for b in benches)
    rows = []
    for group, benches in groups.items():
        tp = throughput_key(benches)
        by_provider = {provider_of(b): b for b in benches}
        cells = []
        for p in providers:
            b = by_provider.get(p)
            if b is None:
                cells.append("")
                continue
            speed = (b.get("extra_info") or {}).get("speedup_vs_eager")
            text = fmt(headline(b, tp))
            cells.append(text if speed is None or p in EAGER else f"{text} ({speed:.2f}x)")
        unit = tp[1] if tp else "ms"
        rows.append([f"{group} [{unit}]", *cells])
    return markdown_table(["group", *providers], rows)


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


def accuracy_table(benches: list[dict[str, Any]]) -> str:
    """Accuracy runs: metrics in percent next to the wall time."""
    rows = []
    for b in benches:
        info = b.get("extra_info") or {}
        info = {"n_images": info.get("val_images"), **info}  # a training run reports its validation images
        rows.append([b.get("group", "?"), provider_of(b), *(fmt(info.get(k), 4) for k, _ in ACCURACY)])
    return markdown_table(["group", "provider", *(label for _, label in ACCURACY)], rows)


def precision_table(benches: list[dict[str, Any]]) -> str:
    """A ``cpu-precision`` group: one row per path with its speed and its agreement with eager fp32."""
    rows, notes, weights = [], [], {(b.get("extra_info") or {}).get("weights") for b in benches} - {None}
    for b in benches:
        info = b.get("extra_info") or {}
        cells = [
            f"{info[k]:.2f}x" if k == "speedup_vs_eager" and k in info else fmt(info.get(k), 4) for k, _ in PRECISION
        ]
        rows.append([provider_of(b), *cells])
        if info.get("auto_choice"):
            notes.append(f"auto chose {info['auto_choice']}")
    notes = [f"Weights: {'; '.join(sorted(weights))}.", *notes] if weights else notes
    kinds = {(b.get("extra_info") or {}).get("cpu_kind") for b in benches} - {None}
    notes = [f"CPU kind: {'; '.join(sorted(kinds))}.", *notes] if kinds else notes
    return "\n\n".join([markdown_table(["path", *(label for _, label in PRECISION)], rows), *notes])


def precision_sections(groups: dict[str, list[dict[str, Any]]]) -> list[str]:
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
