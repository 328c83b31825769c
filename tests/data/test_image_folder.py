"""Generic image folder: optional masks and labels, split sub-folders, size-mismatch errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fastmtl.data import ImageFolder, build_dataset


@pytest.fixture
def folder_root(tmp_path):
    """images/{a.png, b.jpg, c.tif}; masks for a (same stem) and b (``_mask`` suffix); labels for a and c."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rgb = np.zeros((12, 16, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "images" / "a.png")
    Image.fromarray(rgb).save(tmp_path / "images" / "b.jpg")
    Image.fromarray(np.zeros((12, 16), np.uint16)).save(tmp_path / "images" / "c.tif")
    mask = np.zeros((12, 16), np.uint8)
    mask[:, :8] = 255
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    Image.fromarray(mask // 255).save(tmp_path / "masks" / "b_mask.bmp")  # 0/1
    (tmp_path / "labels.csv").write_text("image,cat,dog\na.png,1,0\nc,0,1\n")
    return tmp_path


def test_folder_with_partial_masks_and_labels(folder_root):
    dataset = ImageFolder(folder_root, img_size=(6, 8), cache_dir=False)
    assert dataset.ids == ["a", "b", "c"] and dataset.class_names == ("cat", "dog")
    assert dataset.labels.tolist() == [[1, 0], [0, 0], [0, 1]] and dataset.has_labels.tolist() == [True, False, True]
    assert dataset.has_masks.tolist() == [True, True, False]
    a, b, c = dataset[0], dataset[1], dataset[2]
    assert a["mask"][:, :4].eq(1).all() and a["mask"][:, 4:].eq(0).all()
    assert set(b["mask"].unique().tolist()) == {0, 1} and not b["has_label"]
    assert not c["has_mask"] and c["image"].shape == (3, 6, 8) and c["label"].tolist() == [0, 1]


def test_multiclass_masks_and_split_subfolder(folder_root, tmp_path):
    multi = ImageFolder(folder_root, img_size=None, seg_classes=3, cache_dir=False)
    assert set(multi[1]["mask"].unique().tolist()) == {0, 1}
    with pytest.raises(ValueError, match=r"mask .*a.png holds value 255 but the dataset has 3 classes"):
        multi[0]
    (tmp_path / "val").mkdir()
    (folder_root / "images").rename(tmp_path / "val" / "images")
    dataset = build_dataset("folder", tmp_path, "val", img_size=8, train=True, cache_dir=False)
    assert len(dataset) == 3 and dataset.class_names == () and dataset[0]["label"].shape == (0,)


def test_folder_errors(folder_root, tmp_path):
    Image.fromarray(np.zeros((10, 16), np.uint8)).save(folder_root / "masks" / "a.png")
    dataset = ImageFolder(folder_root, img_size=8, cache_dir=False)
    with pytest.raises(
        ValueError, match=r"size mismatch: image .*images/a.png is 12x16 .* mask .*masks/a.png is 10x16"
    ):
        dataset[0]
    (folder_root / "labels.csv").write_text("id,cat\nzzz,1\n")
    with pytest.raises(FileNotFoundError, match="zzz"):
        ImageFolder(folder_root, img_size=8)
    (folder_root / "labels.csv").write_text("id,cat\na,yes\n")
    with pytest.raises(ValueError, match="non-numeric"):
        ImageFolder(folder_root, img_size=8)
    with pytest.raises(FileNotFoundError, match="images"):
        ImageFolder(tmp_path / "nothing", img_size=8)
