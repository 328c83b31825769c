"""read_image / read_mask: every image mode to RGB uint8, masks keep their values, clear errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from fastmtl.data.io import ImageReadError, image_size, read_image, read_mask, to_uint8


def _save(tmp_path, image: Image.Image, name: str):
    path = tmp_path / name
    image.save(path)
    return path


def test_grey_is_replicated(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = read_image(_save(tmp_path, Image.fromarray(grey), "g.png"))
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    assert all(np.array_equal(out[:, :, c], grey) for c in range(3))


def test_rgba_drops_alpha(tmp_path):
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    out = read_image(_save(tmp_path, Image.fromarray(rgba, "RGBA"), "a.png"))
    assert out.shape == (5, 6, 3) and (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


def test_palette_is_expanded(tmp_path):
    image = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    out = read_image(_save(tmp_path, image, "p.png"))
    assert out[0, 1].tolist() == [10, 200, 30] and out[0, 0].tolist() == [0, 0, 0]


@pytest.mark.parametrize(("top", "expected"), [(65535, 255), (4095, 255), (200, 200)])
def test_16bit_is_scaled_by_bit_depth(tmp_path, top, expected):
    array = np.array([[0, top]], dtype=np.uint16)
    out = read_image(_save(tmp_path, Image.fromarray(array), "d.png"))
    assert out.dtype == np.uint8 and out[0, 0, 0] == 0 and out[0, 1, 0] == expected


def test_to_uint8_floats():
    assert to_uint8(np.array([0.0, 0.5, 1.0])).tolist() == [0, 128, 255]
    assert to_uint8(np.array([-3.0, 100.0, 300.0])).tolist() == [0, 100, 255]


def test_corrupt_and_missing_files_raise_image_read_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="bad.png") as info:
        read_image(bad)
    assert info.value.path == bad and info.value.reason
    good = _save(tmp_path, Image.fromarray(np.zeros((64, 64, 3), np.uint8)), "t.jpg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageReadError, match="truncated.jpg"):
        read_image(truncated)
    with pytest.raises(ImageReadError, match="no such file"):
        read_mask(tmp_path / "missing.png")
    assert isinstance(info.value, OSError)
    again = pickle.loads(pickle.dumps(info.value))  # DataLoader workers pickle exceptions
    assert again.path == bad and str(again) == str(info.value)


def test_masks_keep_values(tmp_path):
    index = np.array([[0, 1], [2, 3]], np.uint8)
    assert np.array_equal(read_mask(_save(tmp_path, Image.fromarray(index), "m.png")), index)
    palette = Image.fromarray(index, "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    assert np.array_equal(read_mask(_save(tmp_path, palette, "p.png")), index)
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (0, 0, 255)  # coloured mask: channel maximum
    assert read_mask(_save(tmp_path, Image.fromarray(rgb), "c.png")).tolist() == [[255, 0], [0, 0]]
    assert image_size(tmp_path / "c.png") == (2, 2)
