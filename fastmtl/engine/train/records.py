"""Run records: per-epoch ``log.jsonl`` / ``log.csv`` (rewritten whole from the history, so a resumed run's log
matches an uninterrupted one) and the learning curves ``curves.png``."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastmtl.checkpoint.rundir import RunDir
from fastmtl.files import atomic_write_bytes, json_safe

__all__ = ["plot_curves", "write_logs"]

# Validation metrics worth a curve, when present: (key, title).
_CURVES = (
    ("val_ji", "val JI (IoU) %"),
    ("val_dsc", "val DSC %"),
    ("val_auc_mean", "val AUC %"),
    ("val_acc", "val Acc %"),
)


def write_logs(history: Sequence[dict[str, Any]], run_dir: RunDir) -> None:
    """Writes ``log.jsonl`` (one object per epoch) and ``log.csv`` (one row per epoch, union of keys)."""
    lines = [json.dumps(json_safe(row)) for row in history]
    atomic_write_bytes(run_dir.log_jsonl, ("\n".join(lines) + "\n" if lines else "").encode())
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(run_dir.log_csv, buffer.getvalue().encode())


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(row["epoch"], row[key]) for row in history if isinstance(row.get(key), (int, float))]
    points = [(e, float(v)) for e, v in points if math.isfinite(v)]
    return [e for e, _ in points], [v for _, v in points]


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Draws the losses and the validation metrics per epoch into a PNG; None when there is no epoch yet.

    Uses matplotlib's object API with the Agg canvas: no display, no global pyplot state.
    """
    if not history:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metrics = [(k, t) for k, t in _CURVES if _series(history, k)[0]]
    fig = Figure(figsize=(5 * (1 + bool(metrics)), 4), dpi=100)
    FigureCanvasAgg(fig)
    loss_ax = fig.add_subplot(1, 1 + bool(metrics), 1)
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        loss_ax.plot(*_series(history, key), marker="o", label=label)
    loss_ax.set(title="loss", xlabel="epoch")
    loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.legend()
    if metrics:
        metric_ax = fig.add_subplot(1, 2, 2)
        for key, title in metrics:
            metric_ax.plot(*_series(history, key), marker="o", label=title)
        metric_ax.set(title="validation metrics", xlabel="epoch", ylabel="percent")
        metric_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        metric_ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)
    return path
