"""OCT manifest loader: mask encodings, tasks, subject splits; the real Duke DME / RETOUCH sample if present."""

from __future__ import annotations

import pytest
import torch

from fastmtl.data import OCTManifest, build_dataset
from fastmtl.data.oct import mask_lut, parse_mask_encoding


def test_encodings():
    assert parse_mask_encoding("0=bg,1=IRF,2=SRF,3=PED") == {0: "bg", 1: "IRF", 2: "SRF", 3: "PED"}
    assert parse_mask_encoding("0/255") == {}
    assert mask_lut("0/255", "fluid") == "binary"
    lut = mask_lut("0=bg,1=PED,2=SRF,3=IRF", "retouch")
    assert lut[:4].tolist() == [0, 3, 2, 1]
    with pytest.raises(ValueError, match="no IRF/SRF/PED"):
        mask_lut("0=bg,1=fluid(any)", "retouch")


def test_fluid_task_and_subject_split(manifest_root):
    parts = {
        split: OCTManifest(manifest_root, split, subset="duke", img_size=(10, 15), fractions=(2, 1, 1), cache_dir=False)
        for split in ("train", "val", "test")
    }
    subjects = [set(ds.groups) for ds in parts.values()]
    assert [len(s) for s in subjects] == [2, 1, 1] and len(set.union(*subjects)) == 4
    train = parts["train"]
    assert train.class_names == ("fluid",) and train.seg_classes == 1 and train.labels.shape == (4, 1)
    sample = train[0]
    assert sample["image"].shape == (3, 10, 15) and sample["orig_size"].tolist() == [20, 30]
    assert sample["label"].tolist() == [float(sample["mask"].any())] and sample["has_label"]


def test_two_class_fluid_task_shares_the_mask_and_names_the_class(manifest_root):
    binary = OCTManifest(manifest_root, "all", subset="duke", img_size=None, cache_dir=False)
    softmax = OCTManifest(manifest_root, "all", subset="duke", task="fluid-2class", img_size=None, cache_dir=False)
    assert (binary.seg_classes, softmax.seg_classes) == (1, 2)
    assert binary.seg_class_names == softmax.seg_class_names == ("fluid",)
    for a, b in zip(binary, softmax, strict=True):
        assert torch.equal(a["mask"], b["mask"]) and a["label"].tolist() == b["label"].tolist()
    retouch = OCTManifest(manifest_root, "all", subset="rsample", task="retouch", img_size=None, cache_dir=False)
    assert retouch.seg_class_names == ("irf", "srf", "ped")


def test_retouch_task_remaps_classes(manifest_root):
    dataset = OCTManifest(manifest_root, "all", subset="rsample", task="retouch", img_size=None, cache_dir=False)
    assert dataset.seg_classes == 4 and dataset.class_names == ("IRF", "SRF", "PED")
    first, second, third = dataset[0], dataset[1], dataset[2]
    assert set(first["mask"].unique().tolist()) == {0, 1, 3}
    assert (second["mask"][first["mask"] == 1] == 3).all()  # stored 1 means PED in the re-ordered encoding
    assert first["label"].tolist() == [1, 0, 1] and first["has_label"]
    assert not third["has_mask"] and not third["has_label"] and third["mask"].sum() == 0
    fluid = OCTManifest(manifest_root, "all", subset="rsample", img_size=None, vendor="topcon", cache_dir=False)
    assert len(fluid) == 1 and set(fluid[0]["mask"].unique().tolist()) == {0, 1}


def test_bad_manifests(manifest_root, tmp_path):
    with pytest.raises(ValueError, match="no rows with dataset='nope'.*available: \\['duke', 'rsample'\\]"):
        OCTManifest(manifest_root, "all", subset="nope", img_size=8)
    with pytest.raises(ValueError, match="no IRF/SRF/PED"):
        OCTManifest(manifest_root, "all", subset="duke", task="retouch", img_size=8)
    with pytest.raises(ValueError, match="task must be one of"):
        OCTManifest(manifest_root, "all", task="layers", img_size=8)
    text = (manifest_root / "manifest.csv").read_text()
    (manifest_root / "manifest.csv").write_text(text.replace("mask_encoding", "encoding", 1))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['mask_encoding'\]"):
        OCTManifest(manifest_root, "all", img_size=8)
    with pytest.raises(FileNotFoundError, match="manifest"):
        OCTManifest(tmp_path / "absent", "all", img_size=8)


@pytest.mark.data
def test_real_duke_subject_split(oct_real):
    parts = {
        split: build_dataset("oct", oct_real, split, img_size=64, train=False, cache_dir=False, subset="duke_dme")
        for split in ("train", "val", "test")
    }
    subjects = [set(ds.groups) for ds in parts.values()]
    assert sum(len(s) for s in subjects) == 8 and len(set.union(*subjects)) == 8  # no subject in two splits
    assert sum(len(ds) for ds in parts.values()) == 88 and all(len(ds) % 11 == 0 for ds in parts.values())
    sample = parts["val"][0]
    assert sample["image"].shape == (3, 64, 64) and sample["orig_size"].tolist() == [496, 768]
    assert set(sample["mask"].unique().tolist()) <= {0, 1} and sample["label"].shape == (1,)


@pytest.mark.data
def test_real_retouch_sample(oct_real):
    dataset = OCTManifest(oct_real, "all", subset="retouch_sample", task="retouch", img_size=None, cache_dir=False)
    assert len(dataset) == 9
    for index in range(0, 9, 4):
        sample = dataset[index]
        present = [int((sample["mask"] == c).any()) for c in (1, 2, 3)]
        assert present == sample["label"].int().tolist() and sample["image"].shape == (3, 256, 256)
