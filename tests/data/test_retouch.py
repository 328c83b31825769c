"""RETOUCH loader on small MetaImage volumes written with SimpleITK in the official layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastmtl.data import Retouch, build_dataset, denormalize
from fastmtl.data import retouch as retouch_module
from fastmtl.data.retouch import find_volumes


def test_find_volumes_reads_headers_and_vendors(retouch_root):
    volumes = find_volumes(retouch_root)
    assert [v.name for v in volumes] == ["Cirrus/TRAIN001", "Cirrus/TRAIN002", "Cirrus/TRAIN003", "Topcon/TRAIN049"]
    assert all(v.shape == (4, 32, 40) and v.ref_path is not None for v in volumes)
    assert [v.name for v in find_volumes(retouch_root, vendor="topcon")] == ["Topcon/TRAIN049"]
    one_case = retouch_root / "RETOUCH-TrainingSet-Cirrus" / "TRAIN002"
    assert [v.name for v in find_volumes(one_case)] == ["Cirrus/TRAIN002"]


def test_all_bscans_labels_and_masks(retouch_root, tmp_path):
    dataset = Retouch(retouch_root, "all", img_size=(16, 20), vendor="Cirrus", cache_dir=tmp_path / "c")
    assert len(dataset) == 12 and dataset.seg_classes == 4 and dataset.class_names == ("IRF", "SRF", "PED")
    expected = [[0, 0, 0], [1, 0, 0], [0, 1, 1], [1, 1, 1]] * 3  # per B-scan presence, see the fixture
    assert dataset.labels.tolist() == expected
    assert dataset.ids[5] == "Cirrus/TRAIN002/001" and dataset.groups[5] == "Cirrus/TRAIN002"
    sample = dataset[3]
    assert sample["image"].shape == (3, 16, 20) and sample["mask"].shape == (16, 20)
    assert sample["mask"].dtype == torch.int64 and set(sample["mask"].unique().tolist()) == {0, 1, 2, 3}
    assert sample["orig_size"].tolist() == [32, 40] and sample["has_mask"] and sample["has_label"]
    pixels = denormalize(sample["image"])  # greyscale replicated to 3 channels
    assert torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[0], pixels[2])
    assert dataset[0]["mask"].sum() == 0


def test_volume_split_never_shares_a_volume(retouch_root, tmp_path):
    parts = {
        split: Retouch(retouch_root, split, img_size=8, vendor="Cirrus", fractions=(1, 1, 1), cache_dir=False)
        for split in ("train", "val", "test")
    }
    groups = {split: set(ds.groups) for split, ds in parts.items()}
    assert all(len(g) == 1 for g in groups.values())
    assert set.union(*groups.values()) == {"Cirrus/TRAIN001", "Cirrus/TRAIN002", "Cirrus/TRAIN003"}
    again = Retouch(retouch_root, "val", img_size=8, vendor="Cirrus", fractions=(1, 1, 1), cache_dir=False)
    assert set(again.groups) == groups["val"]  # seeded


def test_volumes_are_read_once(retouch_root, tmp_path, monkeypatch):
    calls = []
    original = retouch_module._read_volume
    monkeypatch.setattr(retouch_module, "_read_volume", lambda path: calls.append(path) or original(path))
    dataset = build_dataset("retouch", retouch_root, "all", img_size=16, train=True, cache_dir=tmp_path / "c")
    assert len(calls) == 8  # 4 volumes x (oct + reference), at construction
    for index in range(len(dataset)):
        dataset[index]
    Retouch(retouch_root, "all", img_size=16, cache_dir=tmp_path / "c")[5]
    assert len(calls) == 8
    topcon = dataset[len(dataset) - 1]["image"]  # 16-bit volume scaled per volume to 0..255
    assert dataset.volumes[-1].vendor == "Topcon" and topcon.std() > 0.1


def test_case_without_reference_and_bad_volumes(retouch_root, tmp_path, write_volume):
    case = retouch_root / "RETOUCH-TestSet-Spectralis" / "TEST001"
    write_volume(case, np.zeros((2, 32, 40), np.uint8), "oct")
    dataset = Retouch(retouch_root, "all", img_size=8, vendor="Spectralis", cache_dir=False)
    assert len(dataset) == 2 and not dataset.has_masks.any() and not dataset[0]["has_label"]
    write_volume(case, np.zeros((2, 30, 40), np.uint8), "reference")
    with pytest.raises(ValueError, match=r"size mismatch: volume .*TEST001.*oct.mhd .* reference"):
        Retouch(retouch_root, "all", img_size=8, vendor="Spectralis", cache_dir=False)
    with pytest.raises(ValueError, match="no Spectralis volumes"):
        Retouch(retouch_root / "RETOUCH-TrainingSet-Cirrus", "all", img_size=8, vendor="Spectralis")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no RETOUCH volumes"):
        Retouch(tmp_path / "empty", "all", img_size=8)
