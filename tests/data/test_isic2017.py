"""ISIC 2017 loader on a tiny official-layout fixture and, when present, on the real training split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fastmtl.data import ISIC2017, ImageReadError, build_dataset


def _check_sample(sample, size, k=3):
    assert sample["image"].shape == (3, *size) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == size and sample["mask"].dtype == torch.int64
    assert sample["label"].shape == (k,) and sample["label"].dtype == torch.float32
    assert sample["has_mask"].dtype == torch.bool and sample["has_label"].dtype == torch.bool
    assert sample["orig_size"].dtype == torch.int64 and sample["orig_size"].shape == (2,)
    assert isinstance(sample["id"], str)


def test_training_split(isic_root, tmp_path):
    dataset = ISIC2017(isic_root, "training", img_size=(24, 32), cache_dir=tmp_path / "c")
    assert len(dataset) == 3 and dataset.ids == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
    assert dataset.class_names == ("melanoma", "seborrheic_keratosis", "nevus") and dataset.seg_classes == 1
    assert dataset.labels.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert list(dataset.groups) == dataset.ids and dataset.has_masks.all()
    sample = dataset[1]
    _check_sample(sample, (24, 32))
    assert sample["has_mask"] and sample["has_label"] and sample["orig_size"].tolist() == [36, 36]
    assert set(sample["mask"].unique().tolist()) == {0, 1}  # 0/255 PNG binarised
    # the lesion is dark: normalised pixels under the mask are darker than outside
    grey = sample["image"].mean(0)
    assert grey[sample["mask"] == 1].mean() < grey[sample["mask"] == 0].mean()


def test_split_without_masks_and_names(isic_root, tmp_path):
    dataset = build_dataset("isic2017", isic_root, "test", img_size=16, train=True, cache_dir=tmp_path / "c")
    assert dataset.split == "Test_v2" and not dataset.has_masks.any()
    sample = dataset[0]
    _check_sample(sample, (16, 16))
    assert not sample["has_mask"] and sample["mask"].sum() == 0 and sample["has_label"]
    assert ISIC2017(isic_root, "Training", img_size=8, cache_dir=False).split == "Training"


def test_missing_csv_needs_require_labels_false(isic_root):
    (isic_root / "ISIC-2017_Test_v2_Part3_GroundTruth.csv").unlink()
    with pytest.raises(FileNotFoundError, match="ISIC-2017_Test_v2_Part3_GroundTruth.csv"):
        ISIC2017(isic_root, "test", img_size=8, cache_dir=False)
    dataset = ISIC2017(isic_root, "test", img_size=8, cache_dir=False, require_labels=False)
    assert dataset.ids == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]  # superpixels ignored
    assert not dataset.has_labels.any() and not dataset[0]["has_label"]


def test_bad_inputs_have_clear_errors(isic_root):
    with pytest.raises(FileNotFoundError, match="ISIC-2017_Validation_Data"):
        ISIC2017(isic_root, "validation", img_size=8, cache_dir=False)
    with pytest.raises(ValueError, match="unknown ISIC2017 split .dev.; expected one of training, train, validation"):
        ISIC2017(isic_root, "dev", img_size=8, cache_dir=False)
    csv_path = isic_root / "ISIC-2017_Training_Part3_GroundTruth.csv"
    good = csv_path.read_text()
    csv_path.write_text(good.replace("seborrheic_keratosis", "sk"))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['seborrheic_keratosis'\]"):
        ISIC2017(isic_root, "training", img_size=8, cache_dir=False)
    csv_path.write_text(good + "ISIC_0009999,0.0,0.0\n")
    with pytest.raises(FileNotFoundError, match="ISIC_0009999"):
        ISIC2017(isic_root, "training", img_size=8, cache_dir=False)
    csv_path.write_text(good)
    (isic_root / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000002_segmentation.png").unlink()
    with pytest.raises(FileNotFoundError, match="ISIC_0000002_segmentation.png"):
        ISIC2017(isic_root, "training", img_size=8, cache_dir=False)


def test_size_mismatch_and_corrupt_image(isic_root):
    mask_dir = isic_root / "ISIC-2017_Training_Part1_GroundTruth"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(mask_dir / "ISIC_0000000_segmentation.png")
    dataset = ISIC2017(isic_root, "training", img_size=8, cache_dir=False)
    with pytest.raises(ValueError, match=r"size mismatch: image .*ISIC_0000000.jpg.* mask .*ISIC_0000000_seg"):
        dataset[0]
    (isic_root / "ISIC-2017_Training_Data" / "ISIC_0000001.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(ImageReadError, match="ISIC_0000001.jpg"):
        dataset[1]


@pytest.mark.data
def test_real_training_split(isic_real, tmp_path):
    dataset = ISIC2017(isic_real, "training", img_size=224, train=True, cache_dir=tmp_path / "c")
    assert len(dataset) == 2000
    assert dataset.labels.sum(0).tolist() == [374, 254, 1372]
    assert (dataset.labels.sum(1) == 1).all()
    for index in (0, 1000, 1999):
        sample = dataset[index]
        _check_sample(sample, (224, 224))
        assert sample["orig_size"].tolist() == [256, 256] and sample["has_mask"]
        assert set(sample["mask"].unique().tolist()) <= {0, 1} and sample["mask"].sum() > 0
