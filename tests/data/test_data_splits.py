"""Stratified and grouped splits, and subsets that keep the dataset attributes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fastmtl.data import SyntheticLesions, group_split, split_indices, stratified_split, subset


def _isic_like_labels(n=200, seed=0):
    classes = np.random.default_rng(seed).choice(3, size=n, p=(0.19, 0.13, 0.68))
    return np.eye(3, dtype=np.float32)[classes]


def test_stratified_split_keeps_class_shares():
    labels = _isic_like_labels()
    train, val = stratified_split(labels, 0.2, seed=1)
    assert len(val) == 40 and len(train) == 160 and not set(train) & set(val)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(200))
    for k in range(3):
        expected = labels[:, k].sum() * 0.2
        assert abs(labels[val, k].sum() - expected) <= 1
    again = stratified_split(labels, 0.2, seed=1)
    assert np.array_equal(again[1], val) and not np.array_equal(stratified_split(labels, 0.2, seed=2)[1], val)
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(labels, 1.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_split_never_shares_a_group(seed):
    groups = [f"subject{i // 11}" for i in range(88)]  # Duke DME shape: 8 subjects x 11 B-scans
    parts = group_split(groups, (0.75, 0.125, 0.125), seed=seed)
    owners = [{groups[i] for i in part} for part in parts]
    assert [len(o) for o in owners] == [6, 1, 1]
    assert not (owners[0] & owners[1]) and not (owners[0] & owners[2]) and not (owners[1] & owners[2])
    assert sum(len(p) for p in parts) == 88
    uneven = group_split(["a"] * 10 + ["b"] * 3 + ["c"] * 3 + ["d"] * 4, (0.5, 0.5), seed=seed)
    assert {len(p) for p in uneven} == {10}


def test_split_indices_auto_and_subset_attributes():
    dataset = SyntheticLesions(40, img_size=16)
    train, val = split_indices(dataset, 0.25, seed=3)  # unique groups -> stratified
    assert len(val) == 10 and len(train) == 30
    part = subset(dataset, val)
    assert part.labels.shape == (10, 3) and np.array_equal(part.labels, dataset.labels[val])
    assert part.class_names == dataset.class_names and part.seg_classes == 1 and len(part.ids) == 10
    assert part.groups.tolist() == dataset.groups[val].tolist()
    nested = subset(part, [0, 1])
    assert nested.ids == [dataset.ids[val[0]], dataset.ids[val[1]]]
    grouped = split_indices(labels=np.zeros((6, 1)), groups=list("aabbcc"), fractions=(2, 1), seed=0)
    assert {len(p) for p in grouped} == {4, 2}
    with pytest.raises(ValueError, match="by must be"):
        split_indices(dataset, 0.2, by="random")


def test_subset_batches_through_a_dataloader():
    dataset = SyntheticLesions(6, img_size=16, train=True)
    loader = DataLoader(subset(dataset, [1, 3, 5]), batch_size=3)
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 3, 16, 16) and batch["mask"].shape == (3, 16, 16)
    assert batch["label"].shape == (3, 3) and batch["has_mask"].dtype == torch.bool
    assert batch["orig_size"].shape == (3, 2) and batch["id"] == [dataset.ids[i] for i in (1, 3, 5)]
