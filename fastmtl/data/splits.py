"""Deterministic train / val / test splits: stratified by label (ISIC) or grouped by subject / volume (OCT).

Both kinds share one allocator: units (samples, or whole groups weighted by their size, largest first) are
visited in a seeded order and each goes to the split furthest below its target share. Within any run of consecutive
units the shares are therefore met to within one unit, which is what makes ordering by stratum give a
stratified split, and the totals are exact up to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

__all__ = [
    "SPLIT_NAMES",
    "DatasetSubset",
    "group_split",
    "select_split",
    "split_indices",
    "stratified_split",
    "subset",
]

SPLIT_NAMES = ("train", "val", "test", "all")


def _shares(fractions: Sequence[float]) -> np.ndarray:
    shares = np.asarray(fractions, dtype=np.float64)
    if shares.ndim != 1 or len(shares) < 2 or (shares < 0).any() or shares.sum() <= 0:
        raise ValueError(f"fractions must be >= 2 non-negative numbers with a positive sum, got {fractions}")
    return shares / shares.sum()


def _allocate(sizes: Sequence[int], shares: np.ndarray) -> np.ndarray:
    """Split id for each unit in visiting order: the split with the largest deficit takes the next unit."""
    counts = np.zeros(len(shares))
    total = 0.0
    out = np.empty(len(sizes), dtype=np.int64)
    for position, size in enumerate(sizes):
        total += size
        split = int(np.argmax(total * shares - counts))
        counts[split] += size
        out[position] = split
    return out


def stratified_split(
    labels: np.ndarray | torch.Tensor, val_fraction: float, seed: int = 1234
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train / val split of single samples.

    Args:
        labels: (N, K) multi-label targets (or (N,) class ids); each distinct row is one stratum.
        val_fraction: share of samples in val, in (0, 1).
        seed: shuffle seed.

    Returns:
        (train indices, val indices), sorted int64 arrays.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    return _stratified(labels, (1.0 - val_fraction, val_fraction), seed)


def _stratified(labels: np.ndarray | torch.Tensor, fractions: Sequence[float], seed: int) -> tuple[np.ndarray, ...]:
    rows = np.asarray(labels).reshape(len(labels), -1)
    _, stratum = np.unique(rows, axis=0, return_inverse=True)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.permutation(len(rows)), stratum.reshape(-1)))  # by stratum, shuffled within
    assigned = np.empty(len(rows), dtype=np.int64)
    assigned[order] = _allocate([1] * len(rows), _shares(fractions))
    return tuple(np.flatnonzero(assigned == k) for k in range(len(fractions)))


def group_split(groups: Sequence, fractions: Sequence[float], seed: int = 1234) -> tuple[np.ndarray, ...]:
    """Split in which every group (subject, volume) lands in exactly one part.

    Args:
        groups: (N,) group id per sample.
        fractions: target share of samples per part, e.g. (0.8, 0.1, 0.1).
        seed: shuffle seed for the group order.

    Returns:
        One sorted int64 index array per fraction.
    """
    keys = np.asarray([str(g) for g in groups], dtype=object)
    names, inverse, sizes = np.unique(keys, return_inverse=True, return_counts=True)
    shuffled = np.random.default_rng(seed).permutation(len(names))
    order = shuffled[np.argsort(-sizes[shuffled], kind="stable")]  # largest groups first, ties in seeded order
    part_of_group = np.empty(len(names), dtype=np.int64)
    part_of_group[order] = _allocate(sizes[order].tolist(), _shares(fractions))
    part = part_of_group[inverse.reshape(-1)]
    return tuple(np.flatnonzero(part == k) for k in range(len(fractions)))


def select_split(groups: Sequence, split: str, fractions: Sequence[float], seed: int) -> np.ndarray:
    """Indices of the named part ("train", "val", "test" or "all") of a grouped split."""
    if split == "all":
        return np.arange(len(groups))
    names = SPLIT_NAMES[: len(fractions)]
    if split not in names:
        raise ValueError(f"split {split!r} not available with fractions {tuple(fractions)}; choose from {names}")
    return group_split(groups, fractions, seed)[names.index(split)]


def split_indices(
    dataset: Dataset | None = None,
    fractions: float | Sequence[float] = 0.1,
    seed: int = 1234,
    *,
    labels: np.ndarray | None = None,
    groups: Sequence | None = None,
    by: str = "auto",
) -> tuple[np.ndarray, ...]:
    """Splits a dataset (or bare labels / groups) into parts.

    Args:
        dataset: anything with ``labels`` and ``groups`` attributes (every fastmtl dataset and subset).
        fractions: a float f means (1 - f, f) = (train, val); or a sequence of shares.
        seed: split seed.
        labels: (N, K) labels when no dataset is given.
        groups: (N,) group ids when no dataset is given.
        by: "group" (no group in two parts), "stratify" (by label row) or "auto": group when some group holds
            more than one sample, else stratify.

    Returns:
        One sorted int64 index array per part.
    """
    if dataset is not None:
        labels = np.asarray(dataset.labels) if labels is None else labels
        groups = dataset.groups if groups is None else groups
    shares = (1.0 - fractions, fractions) if isinstance(fractions, float) else tuple(fractions)
    if by == "auto":
        by = "group" if groups is not None and len(set(map(str, groups))) < len(groups) else "stratify"
    if by == "group":
        if groups is None:
            raise ValueError("by='group' needs groups")
        return group_split(groups, shares, seed)
    if by == "stratify":
        if labels is None:
            raise ValueError("by='stratify' needs labels")
        return _stratified(labels, shares, seed)
    raise ValueError(f"by must be 'auto', 'group' or 'stratify', got {by!r}")


class DatasetSubset(Subset):
    """``torch.utils.data.Subset`` that keeps the dataset attributes, restricted to the subset.

    ``labels``, ``has_labels``, ``has_masks``, ``groups`` and ``ids`` are indexed; every other attribute
    (``class_names``, ``seg_classes``, ``img_size``, ...) is read from the wrapped dataset.
    """

    _INDEXED = ("labels", "has_labels", "has_masks", "groups")

    def __getattr__(self, name: str):
        if name in ("dataset", "indices") or name.startswith("__"):
            raise AttributeError(name)
        value = getattr(self.dataset, name)
        if name in self._INDEXED:
            return np.asarray(value)[np.asarray(self.indices, dtype=np.int64)]
        if name == "ids":
            return [value[i] for i in self.indices]
        return value

    def __repr__(self) -> str:
        return f"DatasetSubset(n={len(self)}, of={self.dataset!r})"


def subset(dataset: Dataset, indices: Sequence[int] | np.ndarray) -> DatasetSubset:
    """A view of ``dataset`` restricted to ``indices`` that still exposes labels, groups and class names."""
    return DatasetSubset(dataset, [int(i) for i in indices])
