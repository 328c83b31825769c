"""build_dataset / detect_kind dispatch and their error messages."""

from __future__ import annotations

import pytest

from fastmtl.data import (
    DATASET_KINDS,
    ISIC2017,
    ImageFolder,
    OCTManifest,
    Retouch,
    SyntheticLesions,
    build_dataset,
    detect_kind,
)


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
