"""The kind table (fastmtl.data.registry): build_dataset / detect_kind dispatch and their error messages, and
what each dataset kind answers for itself: validation split, split aliases, class names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastmtl.data import (
    DATASET_KINDS,
    DATASETS,
    ISIC2017,
    ImageFolder,
    OCTManifest,
    Retouch,
    SyntheticLesions,
    build_dataset,
    dataset_class,
    detect_kind,
)
from fastmtl.engine.train.config import config_from_dict


def test_detect_kind_from_layouts(isic_root, retouch_root, tmp_path):
    assert detect_kind(None) == "synthetic"
    assert detect_kind(isic_root) == "isic2017"
    assert detect_kind(retouch_root) == "retouch"
    assert detect_kind(retouch_root / "RETOUCH-TrainingSet-Cirrus" / "TRAIN001") == "retouch"
    oct_dir = tmp_path / "oct"
    oct_dir.mkdir()
    (oct_dir / "manifest.csv").write_text("dataset\n")
    assert detect_kind(oct_dir) == "oct" and detect_kind(oct_dir / "manifest.csv") == "oct"
    (tmp_path / "folder" / "train" / "images").mkdir(parents=True)
    assert detect_kind(tmp_path / "folder") == "folder"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="cannot tell the dataset kind"):
        detect_kind(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not found"):
        detect_kind(tmp_path / "absent")


def test_build_dataset_dispatch(isic_root, retouch_root, tmp_path):
    common = {"img_size": 8, "train": False, "cache_dir": False}
    assert isinstance(build_dataset("isic2017", isic_root, "training", **common), ISIC2017)
    assert isinstance(build_dataset("auto", retouch_root, "all", vendor="Topcon", **common), Retouch)
    assert isinstance(build_dataset("synthetic", None, "val", n=2, **common), SyntheticLesions)
    images = tmp_path / "f" / "images"
    images.mkdir(parents=True)
    (isic_root / "ISIC-2017_Training_Data" / "ISIC_0000000.jpg").rename(images / "x.jpg")
    assert isinstance(build_dataset("folder", tmp_path / "f", "train", **common), ImageFolder)
    assert OCTManifest.__name__ == "OCTManifest" and "oct" in DATASET_KINDS
    raw = build_dataset("synthetic", None, "val", n=1, normalize="raw", img_size=8, train=False)
    assert raw[0]["image"].max() > 1.5


def test_build_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset kind 'isic'; valid kinds: isic2017, retouch, oct"):
        build_dataset("isic", tmp_path, "train", img_size=8, train=False)
    with pytest.raises(ValueError, match="needs a root"):
        build_dataset("folder", None, "train", img_size=8, train=False)
    with pytest.raises(ValueError, match="normalize must be one of"):
        build_dataset("synthetic", None, "train", img_size=8, train=False, normalize="zscore")
    with pytest.raises(TypeError):
        build_dataset("synthetic", None, "train", img_size=8, train=False, bogus_option=1)


COMMON = {"img_size": 8, "train": False, "cache_dir": False}


def _folder(root: Path, split: str | None = None, classes: str = "benign,malignant") -> Path:
    """``root/[split/]images`` with two images and a ``labels.csv`` whose header names ``classes``."""
    base = root / split if split else root
    (base / "images").mkdir(parents=True)
    for stem in ("x", "y"):
        Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(base / "images" / f"{stem}.png")
    (base / "labels.csv").write_text(f"id,{classes}\nx,1,0\ny,0,1\n")
    return root


def test_kind_table_is_the_one_list_of_kinds():
    assert DATASET_KINDS == tuple(DATASETS) == ("isic2017", "retouch", "oct", "folder", "synthetic")
    assert [dataset_class(k) for k in DATASET_KINDS] == [ISIC2017, Retouch, OCTManifest, ImageFolder, SyntheticLesions]
    assert dataset_class("auto", None) is SyntheticLesions
    with pytest.raises(ValueError, match="unknown dataset kind 'isic'; valid kinds: isic2017, retouch, oct"):
        dataset_class("isic")
    with pytest.raises(ValueError, match="data.kind='isic' is not valid; expected one of auto, isic2017, retouch"):
        config_from_dict({"data": "isic"})


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (ISIC2017, {"training": "training", "train": "training", "validation": "validation", "val": "validation",
                    "test": "test", "Test_v2": "test"}),
        (Retouch, {"training": "train", "train": "train", "validation": "val", "val": "val", "test": "test"}),
        (OCTManifest, {"Training": "train", "train": "train", "VALIDATION": "val", "val": "val", "all": "all"}),
        (ImageFolder, {"training": "train", "validation": "val", "val": "val", "test": "test", "fold1": "fold1"}),
        (SyntheticLesions, {"training": "train", "validation": "val", "val": "val", "test": "test", "all": "all"}),
    ],
)  # fmt: skip
def test_split_aliases_resolve_per_kind(cls, expected):
    assert {name: cls.resolve_split(name) for name in expected} == expected


@pytest.mark.parametrize("cls", [ISIC2017, Retouch, OCTManifest, SyntheticLesions])
def test_unknown_split_names_the_valid_ones(cls):
    with pytest.raises(ValueError, match=f"unknown {cls.__name__} split 'dev'; expected one of .*validation"):
        cls.resolve_split("dev")


def test_own_validation_split_per_kind(isic_root, retouch_root, manifest_root, tmp_path):
    assert ISIC2017.own_val_split(isic_root) is None  # Training and Test_v2 only: training carves one
    (isic_root / "ISIC-2017_Validation_Data").mkdir()
    assert ISIC2017.own_val_split(isic_root) == "validation"
    assert Retouch.own_val_split(retouch_root) == OCTManifest.own_val_split(manifest_root) == "val"
    assert SyntheticLesions.own_val_split(None) == "val"
    assert ImageFolder.own_val_split(_folder(tmp_path / "flat")) is None
    long_name = _folder(_folder(tmp_path / "long", "training"), "validation")
    assert ImageFolder.own_val_split(long_name) == "val"
    val = build_dataset("folder", long_name, "val", **COMMON)  # finds validation/ under either spelling
    train = build_dataset("folder", long_name, "training", **COMMON)
    assert val.root == long_name / "validation" and train.root == long_name / "training"


def test_class_names_per_kind(isic_root, retouch_root, manifest_root, tmp_path):
    isic = build_dataset("auto", isic_root, "train", **COMMON)
    assert (isic.class_names, isic.seg_class_names) == (("melanoma", "seborrheic_keratosis", "nevus"), ("lesion",))
    retouch = build_dataset("auto", retouch_root, "all", vendor="Topcon", **COMMON)
    assert (retouch.class_names, retouch.seg_class_names) == (("IRF", "SRF", "PED"), ("irf", "srf", "ped"))
    for task, names, seg_names in [
        ("fluid", ("fluid",), ("fluid",)),
        ("fluid-2class", ("fluid",), ("fluid",)),
        ("retouch", ("IRF", "SRF", "PED"), ("irf", "srf", "ped")),
    ]:
        ds = build_dataset("oct", manifest_root, "all", task=task, subset="rsample" if task == "retouch" else "duke",
                           **COMMON)  # fmt: skip
        assert (ds.class_names, ds.seg_class_names) == (names, seg_names), task
    folder = build_dataset("auto", _folder(tmp_path / "f", classes="cat,dog"), "train", seg_classes=3, **COMMON)
    assert (folder.class_names, folder.seg_class_names) == (("cat", "dog"), ("class1", "class2"))
    synthetic = build_dataset("synthetic", None, "validation", n=2, **COMMON)
    assert synthetic.class_names == SyntheticLesions.class_names and len(synthetic.class_names) == 3
    assert all(name.startswith("synthetic_") for name in synthetic.class_names)  # no borrowed diagnosis
    assert synthetic.ids[0].startswith("synthetic_val_") and synthetic.seg_class_names == ("lesion",)


def test_segmentation_class_names_must_fit_the_classes():
    class FourClassLesions(SyntheticLesions):
        seg_classes = 4  # but still the one binary name

    with pytest.raises(ValueError, match=r"FourClassLesions names segmentation classes \('lesion',\) but has seg_c"):
        FourClassLesions(2, img_size=8)
