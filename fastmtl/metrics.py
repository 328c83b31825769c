"""Evaluation metrics as the paper reports them (SPEC section 6), with streaming meters for evaluation loops.

Segmentation. Logits are binarised (one channel: sigmoid > 0.5; C >= 2 channels: argmax, foreground classes
1..C-1). Per image and per foreground class: DSC = 2TP / (2TP + FP + FN) and JI = TP / (TP + FP + FN). An image
whose ground truth lacks the class is skipped for that class, whatever the prediction (as the authors'
``Evaluator`` does): false positives on such images are invisible to DSC/JI and show only in the global Dice,
which pools TP/FP/FN over all pixels of all images and skips nothing. DSC/JI of a class average its per-image
values; ``dsc``/``ji``/``global_dice`` average the classes (classes without any defined value are left out;
NaN if none has one).

Classification. One-vs-rest per class at ``sigmoid(logit) > 0.5``; TP/TN/FP/FN per class and summed over the
classes (micro) give accuracy, sensitivity and specificity; ROC-AUC per class from
``sklearn.metrics.roc_auc_score`` (NaN when a class has only one label value in the data).

Every metric is a percentage (AUC included); counts are ints. Undefined ratios are NaN, never an error.

Meters keep per-sample state on the CPU; ``to_state()`` returns plain tensors and lists that
``torch.distributed.all_gather_object`` can carry, ``from_state()`` rebuilds a meter and ``merge()`` concatenates
another meter's samples, so per-rank meters reduce to exactly the single-process result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

__all__ = [
    "BINARY_SEG_CLASS_NAMES",
    "ClassificationMeter",
    "SegmentationMeter",
    "classification_metrics",
    "default_class_names",
    "default_seg_class_names",
    "format_table",
    "segmentation_metrics",
]

BINARY_SEG_CLASS_NAMES = ("lesion",)


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """Generic names ``class0`` .. ``class<K-1>`` for K classification logits (datasets name their own)."""
    return tuple(f"class{i}" for i in range(num_classes))


def default_seg_class_names(num_classes: int) -> tuple[str, ...]:
    """Generic foreground names for ``num_classes`` seg channels: "lesion" (one binary channel), else
    ``class1`` .. ``class<C-1>`` (class 0 is the background). Datasets name their own (``seg_class_names``)."""
    if num_classes == 1:
        return BINARY_SEG_CLASS_NAMES
    return default_class_names(num_classes)[1:]


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den * 100 in float64, NaN where den == 0."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, 100.0 * num / den.clamp_min(1e-300), torch.full_like(num, math.nan))


def _nanmean(values: Tensor) -> float:
    """Mean over the non-NaN entries; NaN (without a warning) when there are none."""
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan


def _check_names(names: Sequence[str], expected: int, what: str) -> tuple[str, ...]:
    names = tuple(names)
    if len(names) != expected:
        raise ValueError(f"{what} needs {expected} names, got {len(names)}: {names}")
    return names


class SegmentationMeter:
    """Streaming per-image DSC/JI and global Dice.

    Args:
        num_classes: segmentation channels of the model (1 = sigmoid mask, C >= 2 = softmax incl. background).
        class_names: names of the foreground classes (1 for binary, C - 1 otherwise); see
            ``default_seg_class_names``.
    """

    def __init__(self, num_classes: int = 1, class_names: Sequence[str] | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        n_fg = 1 if num_classes == 1 else num_classes - 1
        names = default_seg_class_names(num_classes) if class_names is None else class_names
        self.class_names = _check_names(names, n_fg, f"SegmentationMeter(num_classes={num_classes})")
        self.reset()

    def reset(self) -> None:
        """Forget every sample seen so far."""
        n_fg = len(self.class_names)
        self.counts = torch.zeros(0, 3, n_fg, dtype=torch.int64)  # (N, 3 = TP/FP/FN, K) per image

    def _binarise(self, seg_logits: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) logits and (B, H, W) mask -> prediction and truth, both (B, K, H, W) bool."""
        if self.num_classes == 1:
            return torch.sigmoid(seg_logits.float()) > 0.5, (mask >= 0.5).unsqueeze(1)
        fg = torch.arange(1, self.num_classes, device=seg_logits.device).view(1, -1, 1, 1)
        pred = seg_logits.argmax(dim=1, keepdim=True) == fg
        return pred, mask.long().unsqueeze(1) == fg

    @torch.no_grad()
    def update(self, seg_logits: Tensor, mask: Tensor, has_mask: Tensor | None = None) -> None:
        """Add a batch.

        Args:
            seg_logits: (B, num_classes, H, W) logits.
            mask: (B, H, W) or (B, 1, H, W): {0, 1} for binary (binarised at 0.5), class ids for multi-class.
            has_mask: optional (B,) bool; images marked False are ignored entirely.
        """
        if seg_logits.ndim != 4 or seg_logits.shape[1] != self.num_classes:
            raise ValueError(f"seg_logits must be (B, {self.num_classes}, H, W), got {tuple(seg_logits.shape)}")
        b, _, h, w = seg_logits.shape
        if mask.ndim == 4 and mask.shape[1] == 1:
            mask = mask[:, 0]
        if tuple(mask.shape) != (b, h, w):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match seg_logits {tuple(seg_logits.shape)}")
        pred, truth = self._binarise(seg_logits, mask.to(seg_logits.device))  # (B, K, H, W) each
        tp = (pred & truth).sum(dim=(2, 3))  # (B, K)
        fp = (pred & ~truth).sum(dim=(2, 3))
        fn = (~pred & truth).sum(dim=(2, 3))
        counts = torch.stack([tp, fp, fn], dim=1).cpu()  # (B, 3, K)
        if has_mask is not None:
            if tuple(has_mask.shape) != (b,):
                raise ValueError(f"has_mask must have shape ({b},), got {tuple(has_mask.shape)}")
            counts = counts[has_mask.cpu().bool()]
        self.counts = torch.cat([self.counts, counts])

    def per_image(self) -> tuple[Tensor, Tensor]:
        """Per-image DSC and JI in percent, each (N, K) float64, NaN where the class is absent from the truth."""
        tp, fp, fn = self.counts.unbind(dim=1)  # (N, K) each
        present = (tp + fn) > 0
        nan = torch.full(tp.shape, math.nan, dtype=torch.float64)
        dsc = torch.where(present, _ratio(2 * tp, 2 * tp + fp + fn), nan)
        ji = torch.where(present, _ratio(tp, tp + fp + fn), nan)
        return dsc, ji

    def compute(self) -> dict[str, Any]:
        """Flat metrics: dsc, ji, global_dice, n_seg_images and dsc_/ji_/global_dice_/n_present_<class>."""
        if self.counts.shape[0] == 0:
            raise ValueError("SegmentationMeter has no images; call update() first")
        dsc, ji = self.per_image()  # (N, K)
        tp, fp, fn = self.counts.sum(dim=0)  # (K,) each, pooled over all images
        global_dice = _ratio(2 * tp, 2 * tp + fp + fn)  # (K,)
        present = ((self.counts[:, 0] + self.counts[:, 2]) > 0).sum(dim=0)  # (K,)
        per_class = {
            "dsc": torch.tensor([_nanmean(dsc[:, k]) for k in range(dsc.shape[1])]),
            "ji": torch.tensor([_nanmean(ji[:, k]) for k in range(ji.shape[1])]),
            "global_dice": global_dice,
        }
        out: dict[str, Any] = {name: _nanmean(values) for name, values in per_class.items()}
        out["n_seg_images"] = int(self.counts.shape[0])
        for k, cls in enumerate(self.class_names):
            for name, values in per_class.items():
                out[f"{name}_{cls}"] = float(values[k])
            out[f"n_present_{cls}"] = int(present[k])
        return out

    def merge(self, other: SegmentationMeter) -> SegmentationMeter:
        """Append another meter's images (same classes) to this one; returns self."""
        if not isinstance(other, SegmentationMeter) or other.class_names != self.class_names:
            raise ValueError(f"cannot merge {other!r} into a SegmentationMeter over {self.class_names}")
        self.counts = torch.cat([self.counts, other.counts])
        return self

    def to_state(self) -> dict[str, Any]:
        """Plain picklable state: num_classes, class_names and the (N, 3, K) int64 TP/FP/FN counts."""
        return {"num_classes": self.num_classes, "class_names": list(self.class_names), "counts": self.counts}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SegmentationMeter:
        """Rebuild a meter from ``to_state()`` output."""
        meter = cls(state["num_classes"], state["class_names"])
        meter.counts = state["counts"].to(torch.int64).cpu()
        return meter

    def __repr__(self) -> str:
        return f"SegmentationMeter(num_classes={self.num_classes}, images={self.counts.shape[0]})"


class ClassificationMeter:
    """Streaming multi-label classification metrics (micro and per class, percent) and ROC-AUC.

    Args:
        class_names: one name per logit (a dataset's ``class_names``), or the number of logits for the generic
            names of :func:`default_class_names`.
        threshold: a class is predicted when its sigmoid probability is strictly above this.
    """

    def __init__(self, class_names: Sequence[str] | int, threshold: float = 0.5) -> None:
        self.class_names = default_class_names(class_names) if isinstance(class_names, int) else tuple(class_names)
        if not self.class_names:
            raise ValueError("ClassificationMeter needs at least one class name")
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        """Forget every sample seen so far."""
        k = len(self.class_names)
        self.probs = torch.zeros(0, k, dtype=torch.float32)  # (N, K)
        self.labels = torch.zeros(0, k, dtype=torch.int64)  # (N, K)

    @torch.no_grad()
    def update(self, cls_logits: Tensor, labels: Tensor) -> None:
        """Add a batch of (B, K) logits and (B, K) {0, 1} labels."""
        k = len(self.class_names)
        if cls_logits.ndim != 2 or cls_logits.shape[1] != k:
            raise ValueError(
                f"cls_logits must be (B, {k}) for classes {self.class_names}, got {tuple(cls_logits.shape)}"
            )
        if labels.shape != cls_logits.shape:
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match cls_logits {tuple(cls_logits.shape)}")
        self.probs = torch.cat([self.probs, torch.sigmoid(cls_logits.float()).cpu()])
        self.labels = torch.cat([self.labels, (labels > 0.5).long().cpu()])

    def confusion(self) -> Tensor:
        """(4, K) int64 one-vs-rest counts, rows TP, TN, FP, FN."""
        pred = self.probs > self.threshold
        truth = self.labels.bool()
        return torch.stack([pred & truth, ~pred & ~truth, pred & ~truth, ~pred & truth]).sum(dim=1)

    def auc(self) -> Tensor:
        """(K,) ROC-AUC per class in percent; NaN for a class with a single label value."""
        values = []
        for k in range(len(self.class_names)):
            y = self.labels[:, k]
            if y.unique().numel() < 2:  # AUC is undefined with one label value; sklearn would raise
                values.append(math.nan)
                continue
            values.append(100.0 * float(roc_auc_score(y.numpy(), self.probs[:, k].numpy())))
        return torch.tensor(values, dtype=torch.float64)

    def compute(self) -> dict[str, Any]:
        """Flat metrics: acc, sen, spe, auc_mean, tp/tn/fp/fn, n_cls_images and the same per ``_<class>``."""
        if self.labels.shape[0] == 0:
            raise ValueError("ClassificationMeter has no samples; call update() first")
        counts = self.confusion()  # (4, K)
        auc = self.auc()

        def rates(tp: Tensor, tn: Tensor, fp: Tensor, fn: Tensor) -> dict[str, Tensor]:
            return {"acc": _ratio(tp + tn, tp + tn + fp + fn), "sen": _ratio(tp, tp + fn), "spe": _ratio(tn, tn + fp)}

        out: dict[str, Any] = {name: float(v) for name, v in rates(*counts.sum(dim=1)).items()}
        out["auc_mean"] = _nanmean(auc)
        out.update({name: int(v) for name, v in zip(("tp", "tn", "fp", "fn"), counts.sum(dim=1), strict=True)})
        out["n_cls_images"] = int(self.labels.shape[0])
        per_class = rates(*counts)
        for k, cls in enumerate(self.class_names):
            out.update({f"{name}_{cls}": float(v[k]) for name, v in per_class.items()})
            out[f"auc_{cls}"] = float(auc[k])
            out.update({f"{name}_{cls}": int(counts[i, k]) for i, name in enumerate(("tp", "tn", "fp", "fn"))})
        return out

    def merge(self, other: ClassificationMeter) -> ClassificationMeter:
        """Append another meter's samples (same classes and threshold) to this one; returns self."""
        if (
            not isinstance(other, ClassificationMeter)
            or other.class_names != self.class_names
            or other.threshold != self.threshold
        ):
            raise ValueError(f"cannot merge {other!r} into a ClassificationMeter over {self.class_names}")
        self.probs = torch.cat([self.probs, other.probs])
        self.labels = torch.cat([self.labels, other.labels])
        return self

    def to_state(self) -> dict[str, Any]:
        """Plain picklable state: class_names, threshold, (N, K) float32 probs and (N, K) int64 labels."""
        return {
            "class_names": list(self.class_names),
            "threshold": self.threshold,
            "probs": self.probs,
            "labels": self.labels,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ClassificationMeter:
        """Rebuild a meter from ``to_state()`` output."""
        meter = cls(state["class_names"], state["threshold"])
        meter.probs = state["probs"].float().cpu()
        meter.labels = state["labels"].long().cpu()
        return meter

    def __repr__(self) -> str:
        return f"ClassificationMeter(classes={self.class_names}, samples={self.labels.shape[0]})"


def segmentation_metrics(seg_logits: Tensor, mask: Tensor, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """One-shot ``SegmentationMeter`` over a (B, C, H, W) logits batch and its (B, H, W) mask."""
    if seg_logits.ndim != 4:
        raise ValueError(f"seg_logits must be (B, C, H, W), got shape {tuple(seg_logits.shape)}")
    meter = SegmentationMeter(seg_logits.shape[1], class_names)
    meter.update(seg_logits, mask)
    return meter.compute()


def classification_metrics(
    cls_logits: Tensor, labels: Tensor, class_names: Sequence[str] | None = None, threshold: float = 0.5
) -> dict[str, Any]:
    """One-shot ``ClassificationMeter`` over (N, K) logits and (N, K) {0, 1} labels (None: generic class names)."""
    meter = ClassificationMeter(cls_logits.shape[-1] if class_names is None else class_names, threshold)
    meter.update(cls_logits, labels)
    return meter.compute()


_SEG_COLUMNS = (("dsc", "DSC"), ("ji", "JI"), ("global_dice", "global Dice"), ("n_present", "images"))
_CLS_COLUMNS = (
    ("acc", "Acc"),
    ("sen", "Sen"),
    ("spe", "Spe"),
    ("auc", "AUC"),
    ("tp", "TP"),
    ("fn", "FN"),
    ("fp", "FP"),
    ("tn", "TN"),
)
# Keys of each table's last row (mean over classes / micro), one per column above.
_SEG_SUMMARY = ("dsc", "ji", "global_dice", "n_seg_images")
_CLS_SUMMARY = ("acc", "sen", "spe", "auc_mean", "tp", "fn", "fp", "tn")


def _fmt(value: Any, digits: int) -> str:
    """Ints as they are, floats (and 0-d tensors / numpy scalars) with ``digits`` decimals, others via str."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Aligned plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    return [line(header), "  ".join("-" * w for w in widths), *map(line, rows)]


def _table(metrics: dict[str, Any], columns: tuple, summary: tuple, label: str, digits: int, used: set) -> list[str]:
    """One class-by-metric table plus its summary row; records the keys it consumed in ``used``."""
    first = columns[0][0] + "_"
    names = [key[len(first) :] for key in metrics if key.startswith(first)]
    if not names and summary[0] not in metrics:
        return []
    rows = []
    for name in names:
        keys = [f"{col}_{name}" for col, _ in columns]
        used.update(k for k in keys if k in metrics)
        rows.append([name, *(_fmt(metrics.get(k, ""), digits) for k in keys)])
    used.update(k for k in summary if k in metrics)
    rows.append([label, *(_fmt(metrics.get(k, ""), digits) for k in summary)])
    return _render(["class", *(title for _, title in columns)], rows)


def format_table(metrics: dict[str, Any], digits: int = 2) -> str:
    """Render a flat metric dict (segmentation, classification or both merged) as plain-text tables.

    Per-class keys become rows of a segmentation and a classification table, each closed by its summary row
    (``mean`` over classes for segmentation, ``micro`` for classification); any other key is listed below.
    """
    used: set[str] = set()
    lines = []
    seg = _table(metrics, _SEG_COLUMNS, _SEG_SUMMARY, "mean", digits, used)
    if seg:
        lines += ["Segmentation (percent; DSC/JI skip images without the class)", *seg, ""]
    cls = _table(metrics, _CLS_COLUMNS, _CLS_SUMMARY, "micro", digits, used)
    if cls:
        used.add("n_cls_images")
        n = metrics.get("n_cls_images", "?")
        lines += [f"Classification ({n} images; percent, one-vs-rest at 0.5)", *cls, ""]
    rest = [[key, _fmt(value, digits)] for key, value in metrics.items() if key not in used]
    if rest:
        lines += ["Other", *_render(["metric", "value"], rest)]
    return "\n".join(lines).rstrip("\n")
