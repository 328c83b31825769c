"""Synthetic lesions: deterministic, any size, masks match the drawing, labels learnable from pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastmtl.data import SyntheticLesions, build_dataset, denormalize
from fastmtl.data.synthetic import SYNTHETIC_CLASSES


def test_deterministic_and_split_dependent():
    a, b = SyntheticLesions(8, img_size=32, seed=5), SyntheticLesions(8, img_size=32, seed=5)
    assert all(torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["mask"], b[i]["mask"]) for i in range(8))
    other_seed, val = SyntheticLesions(8, img_size=32, seed=6), SyntheticLesions(8, "val", img_size=32, seed=5)
    assert not torch.equal(a[0]["image"], other_seed[0]["image"]) and not torch.equal(a[0]["image"], val[0]["image"])
    assert a.labels.tolist() == b.labels.tolist() and (a.labels.sum(1) == 1).all()


@pytest.mark.parametrize("size", [17, (40, 24)])
def test_any_size_and_contract(size):
    dataset = SyntheticLesions(3, img_size=size, train=True)
    sample = dataset[2]
    hw = (size, size) if isinstance(size, int) else size
    assert sample["image"].shape == (3, *hw) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == hw and sample["mask"].dtype == torch.int64 and sample["mask"].sum() > 0
    assert sample["has_mask"] and sample["has_label"] and sample["orig_size"].tolist() == list(hw)
    assert torch.equal(sample["label"], torch.from_numpy(dataset.labels[2]))
    assert dataset.class_names == SYNTHETIC_CLASSES and dataset.seg_classes == 1


def test_labels_are_learnable_from_pixels():
    """Simple colour statistics already separate the classes well, so a network can learn them quickly."""
    dataset = SyntheticLesions(150, img_size=48)
    features = []
    for index in range(len(dataset)):
        rgb = dataset._load(index)["image"].astype(np.float64)  # (H, W, 3) uint8 as drawn
        grey, mean = rgb.mean(2), rgb.mean((0, 1))
        features.append([np.quantile(grey, 0.1), np.median(grey), grey.std(), mean[2] - mean[0], (grey < 150).mean()])
    classes = dataset.labels.argmax(1)
    assert np.bincount(classes, minlength=3).min() >= 15
    x = np.array(features)
    x = (x - x.mean(0)) / x.std(0)
    centroids = np.stack([x[:100][classes[:100] == k].mean(0) for k in range(3)])  # fit on 100, test on 50
    predicted = np.linalg.norm(x[100:, None, :] - centroids[None], axis=2).argmin(1)
    assert (predicted == classes[100:]).mean() > 0.75


def test_mask_marks_the_dark_lesion_and_build_dataset():
    dataset = build_dataset("synthetic", None, "test", img_size=40, train=False, n=5, normalize="unit")
    assert len(dataset) == 5 and dataset.split == "test"
    sample = dataset[0]
    grey = denormalize(sample["image"], "unit").float().mean(0)
    assert grey[sample["mask"] == 1].mean() < grey[sample["mask"] == 0].mean()
    assert len(build_dataset("synthetic", None, "train", img_size=8, train=True)) == 256
