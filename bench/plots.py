"""The PNG bar plots of a benchmark report: a suite's groups by provider, and two runs side by side."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from bench.benchmarks import headline, ordered_providers, provider_of, throughput_key

__all__ = ["plot_compare", "plot_suite", "safe_name"]


def safe_name(text: str) -> str:
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
    providers = ordered_providers(b for benches in groups.values() for b in benches)
    labels = list(groups)
    units = {(throughput_key(benches) or ("", "ms", False))[1] for benches in groups.values()}
    series = {}
    for p in providers:
        values = []
        for benches in groups.values():
            b = next((x for x in benches if provider_of(x) == p), None)
            values.append(None if b is None else headline(b, throughput_key(benches)))
        series[p] = values
    plt, fig, ax = _figure(len(labels))
    _bars(ax, labels, series, " / ".join(sorted(units)))
    ax.set_title(f"{suite} (higher is better)" if "ms" not in units else suite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_compare(suite: str, names: list[str], series: dict[str, list[float | None]], out_dir: Path) -> Path:
    """Bar plot of two runs (``series``: label -> values, one per ``names`` entry) as ``compare-<suite>.png``."""
    plt, fig, ax = _figure(len(names))
    _bars(ax, names, series, "throughput or ms")
    ax.set_title(f"{suite}: A vs B")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"compare-{safe_name(suite)}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
