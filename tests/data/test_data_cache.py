"""The decoded-array cache: a second pass does not decode, touching the source invalidates, writes are atomic."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fastmtl.data import ISIC2017, io
from fastmtl.data.cache import ArrayCache, default_cache_dir, resize_image, resize_mask, source_key


@pytest.fixture
def decode_counter(monkeypatch):
    """Counts calls of the image decoder every dataset goes through."""
    calls = []
    original = io.read_image

    def counting(path):
        calls.append(path)
        return original(path)

    monkeypatch.setattr(io, "read_image", counting)
    return calls


def test_second_pass_reads_the_cache(isic_root, tmp_path, decode_counter):
    cache = tmp_path / "cache"
    first = ISIC2017(isic_root, "training", img_size=24, cache_dir=cache)
    samples = [first[i] for i in range(len(first))]
    assert len(decode_counter) == 3
    entries = sorted(cache.rglob("*.npz"))
    assert len(entries) == 3 and not list(cache.rglob("*.tmp"))
    second = ISIC2017(isic_root, "training", img_size=24, cache_dir=cache)
    again = [second[i] for i in range(len(second))]
    assert len(decode_counter) == 3  # nothing decoded again
    for a, b in zip(samples, again, strict=True):
        assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])
        assert a["orig_size"].tolist() == b["orig_size"].tolist()


def test_touching_the_source_or_changing_size_invalidates(isic_root, tmp_path, decode_counter):
    cache = tmp_path / "cache"
    dataset = ISIC2017(isic_root, "training", img_size=24, cache_dir=cache)
    dataset[0]
    stat = dataset.image_paths[0].stat()
    os.utime(dataset.image_paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    dataset[0]
    assert len(decode_counter) == 2
    dataset[0]
    assert len(decode_counter) == 2
    ISIC2017(isic_root, "training", img_size=16, cache_dir=cache)[0]  # another target size: new entry
    assert len(decode_counter) == 3


def test_memory_cache_and_default_dir(tmp_path, monkeypatch):
    cache = ArrayCache(None)
    built = []
    arrays = cache.get_or_build("k", lambda: built.append(1) or {"a": np.ones(2, np.uint8)})
    assert cache.get_or_build("k", lambda: built.append(1) or {}) is arrays and built == [1]
    monkeypatch.setenv("FASTMTL_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("FASTMTL_CACHE")
    assert default_cache_dir().parts[-2:] == (".cache", "fastmtl")


def test_disk_cache_roundtrip_and_damaged_entry(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(b"x")
    key = source_key([source], (8, 8))
    assert key != source_key([source], (9, 9))
    cache = ArrayCache(tmp_path / "c")
    assert cache.get(key) is None
    cache.put(key, {"image": np.arange(6, dtype=np.uint8).reshape(2, 3)})
    assert cache.get(key)["image"].tolist() == [[0, 1, 2], [3, 4, 5]]
    next((tmp_path / "c").rglob("*.npz")).write_bytes(b"garbage")
    assert cache.get(key) is None  # a damaged entry is a miss, rebuilt by get_or_build


def test_resize_rules():
    mask = np.zeros((10, 10), np.uint8)
    mask[:, 5:] = 3
    assert set(np.unique(resize_mask(mask, (7, 13)))) == {0, 3}
    image = np.zeros((10, 10, 3), np.uint8)
    image[:, 5:] = 255
    small = resize_image(image, (5, 4))
    assert small.shape == (5, 4, 3) and small.dtype == np.uint8
    assert resize_image(image, None) is image
