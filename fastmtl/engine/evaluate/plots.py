"""PNG figures for evaluation and training reports: ROC curves, per-class confusion matrices, learning curves.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot), so nothing depends on or changes the
global backend and plotting is safe off the main thread. Files are written atomically.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import auc, roc_curve

from fastmtl.files import atomic_write_bytes

__all__ = ["ROC_STYLES", "plot_confusion", "plot_examples", "plot_history", "plot_roc", "roc_figure"]


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


# Per-class styles for curves that may coincide: line style, marker and width all differ, markers are offset
# along the curve, and wider lines are drawn first, so two identical curves still show as two.
ROC_STYLES = (("-", "o", 3.2), ("--", "s", 2.4), ("-.", "^", 1.8), (":", "D", 1.4), ((0, (5, 1, 1, 1)), "v", 1.2))


def roc_figure(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> Figure:
    """The figure :func:`plot_roc` saves: one ROC curve per class (one-vs-rest), each with its own line style,
    marker and width (:data:`ROC_STYLES`) and its AUC in the legend; the chance diagonal is thin and grey.

    A class whose labels hold a single value has no ROC curve; it is listed in the legend as undefined.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels).astype(int)
    if probs.shape != labels.shape or probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} must both be (N, {len(class_names)})")
    fig = Figure(figsize=(5.5, 5.5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle=(0, (1, 3)), color="grey", linewidth=0.8, label="chance (AUC 50.0)")
    for k, name in enumerate(class_names):
        linestyle, marker, width = ROC_STYLES[k % len(ROC_STYLES)]
        style = {"linestyle": linestyle, "marker": marker, "linewidth": width, "color": f"C{k}", "zorder": 2 + k}
        if np.unique(labels[:, k]).size < 2:
            ax.plot([], [], label=f"{name}: AUC undefined (one label value)", **style)
            continue
        fpr, tpr, _ = roc_curve(labels[:, k], probs[:, k])
        ax.plot(fpr, tpr, label=f"{name}: AUC {100 * auc(fpr, tpr):.1f}", markersize=4 + width,
                markevery=(0.04 * k, 0.12), markerfacecolor="none", markeredgewidth=1.2, **style)  # fmt: skip
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(-0.01, 1.01), ylim=(-0.01, 1.02))
    ax.set_title(f"ROC, one class vs the rest ({probs.shape[0]} images)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_roc(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str], path: str | os.PathLike) -> Path:
    """Writes :func:`roc_figure` as a PNG.

    Args:
        probs: (N, K) predicted probabilities.
        labels: (N, K) {0, 1} ground truth.
        class_names: K names.
        path: output PNG.
    """
    return _save(roc_figure(probs, labels, class_names), path)


def plot_confusion(counts: np.ndarray, class_names: Sequence[str], path: str | os.PathLike) -> Path:
    """Per-class 2x2 one-vs-rest confusion matrices (rows truth, columns prediction).

    Args:
        counts: (4, K) counts with rows TP, TN, FP, FN (``ClassificationMeter.confusion()``).
        class_names: K names.
        path: output PNG.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape != (4, len(class_names)):
        raise ValueError(f"counts must be (4, {len(class_names)}) rows TP/TN/FP/FN, got {counts.shape}")
    fig = Figure(figsize=(3.2 * len(class_names), 3.2))
    axes = np.atleast_1d(fig.subplots(1, len(class_names)))
    for k, (ax, name) in enumerate(zip(axes, class_names, strict=True)):
        tp, tn, fp, fn = counts[:, k]
        matrix = np.array([[tn, fp], [fn, tp]])  # rows: truth 0/1; columns: prediction 0/1
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
        for (i, j), value in np.ndenumerate(matrix):
            dark = value > matrix.max() / 2
            ax.text(j, i, str(value), ha="center", va="center", color="white" if dark else "black")
        ax.set_xticks([0, 1], ["neg", "pos"])
        ax.set_yticks([0, 1], ["neg", "pos"])
        ax.set(xlabel="predicted", ylabel="true" if k == 0 else None, title=name)
    return _save(fig, path)


def plot_history(
    history: Mapping[str, Sequence[float]], path: str | os.PathLike, *, xlabel: str = "epoch", title: str = ""
) -> Path:
    """Learning curves: one line per series, one panel per group of series sharing a unit.

    Series whose name contains "loss" go on the left panel, all others (metrics in percent) on the right;
    a panel without series is left out. NaN points are skipped.

    Args:
        history: name -> values per epoch (or step); lists may have different lengths.
        path: output PNG.
        xlabel: x-axis label.
        title: figure title.
    """
    groups = {"loss": {}, "metric": {}}
    for name, values in history.items():
        groups["loss" if "loss" in name else "metric"][name] = [float(v) for v in values]
    panels = [(kind, series) for kind, series in groups.items() if series]
    if not panels:
        raise ValueError("plot_history needs at least one series")
    fig = Figure(figsize=(5.5 * len(panels), 4))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (kind, series) in zip(axes, panels, strict=True):
        for name, values in series.items():
            xs = [i + 1 for i, v in enumerate(values) if not math.isnan(v)]
            ax.plot(xs, [v for v in values if not math.isnan(v)], marker="." if len(xs) < 30 else None, label=name)
        ax.set(xlabel=xlabel, ylabel=kind)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_examples(
    rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]],
    path: str | os.PathLike,
    class_names: Sequence[str] = (),
) -> Path:
    """A grid with one row per example: the image, the ground truth filled, the prediction filled with the
    ground truth outlined in green (colours per class as :data:`~fastmtl.engine.overlay.PRED_PALETTE`).

    Args:
        rows: (title, uint8 (H, W, 3) image, integer (H, W) ground truth, integer (H, W) prediction or None).
        path: output PNG.
        class_names: foreground class names for the legend (class 1 first); empty = no legend.
    """
    from fastmtl.engine.overlay import PRED_PALETTE, draw_overlay

    if not rows:
        raise ValueError("plot_examples needs at least one example")
    fig = Figure(figsize=(7.5, 2.5 * len(rows) + 0.4))
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, (title, image, gt, pred) in enumerate(rows):
        panels = [image, draw_overlay(image, gt), image if pred is None else draw_overlay(image, pred, gt)]
        for c, (panel, name) in enumerate(zip(panels, ("image", "ground truth", "prediction"), strict=True)):
            ax = axes[r, c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{title}\n{name}" if c == 0 else name, fontsize=8)
    if class_names:
        from matplotlib.patches import Patch

        colours = [PRED_PALETTE[i % len(PRED_PALETTE)] / 255.0 for i in range(len(class_names))]
        handles = [Patch(color=tuple(c), label=n) for c, n in zip(colours, class_names, strict=True)]
        handles.append(Patch(edgecolor=(0, 1, 0), fill=False, label="ground-truth outline"))
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04 if class_names else 0, 1, 1))
    return _save(fig, path)
