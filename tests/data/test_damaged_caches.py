"""Damaged caches: an entry of the decoded-image cache or of check-data's findings that is truncated or altered on
disk is verified when read, never used, never fatal: it is rebuilt, with one printed line for the image cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastmtl.cli import main
from fastmtl.data.cache import ArrayCache, _checksum
from tests.engine.conftest import write_isic_split


def _entry(tmp_path):
    cache = ArrayCache(tmp_path / "cache")
    rng = np.random.default_rng(0)
    arrays = {"image": rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), "mask": np.eye(16, dtype=np.uint8)}
    cache.get_or_build("ab" * 32, lambda: arrays)
    return cache, arrays, next((tmp_path / "cache").rglob("*.npz"))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a zip that stops midway: BadZipFile


def _flip_a_pixel_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the image array: the zip's CRC no longer matches
    path.write_bytes(bytes(data))


def _rewrite_with_other_pixels(path):
    with np.load(path) as stored:
        arrays = {name: stored[name] for name in stored.files}
    arrays["image"] = arrays["image"] // 2  # a well-formed file whose checksum is that of the old arrays
    np.savez(path, **arrays)


@pytest.mark.parametrize("damage", [_truncate, _flip_a_pixel_byte, _rewrite_with_other_pixels])
def test_a_damaged_image_cache_entry_is_rebuilt_with_one_line(tmp_path, capsys, damage):
    cache, arrays, path = _entry(tmp_path)
    damage(path)
    built = []
    again = cache.get_or_build("ab" * 32, lambda: built.append(1) or arrays)
    assert built == [1] and all(np.array_equal(again[k], arrays[k]) for k in arrays)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fastmtl: the cache entry {path} is damaged (")
    assert lines[0].endswith("; rebuilding it")
    fresh = ArrayCache(tmp_path / "cache").get("ab" * 32)  # the rebuilt entry verifies
    assert fresh is not None and set(fresh) == set(arrays)
    assert capsys.readouterr().err == ""


def test_the_checksum_covers_names_shapes_and_dtypes():
    image = np.zeros((4, 4), np.uint8)
    assert not np.array_equal(_checksum({"a": image}), _checksum({"b": image}))
    assert not np.array_equal(_checksum({"a": image}), _checksum({"a": image.reshape(2, 8)}))
    assert not np.array_equal(_checksum({"a": image}), _checksum({"a": image.view(np.int8)}))


def test_check_data_recomputes_findings_from_a_damaged_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FASTMTL_CACHE", str(tmp_path / "cache"))
    root = write_isic_split(tmp_path / "isic", "Training", n=3)
    (root / "ISIC-2017_Training_Data" / "ISIC_0000001.jpg").write_bytes(b"not an image")
    args = ["check-data", "--data-root", str(root), "--out", str(tmp_path / "report.csv")]
    assert main(args) == 2
    first = capsys.readouterr().out
    (cached,) = (tmp_path / "cache" / "preflight").glob("*.json")
    for damaged in ({key: "garbage" for key in json.loads(cached.read_text())}, ["not", "a", "mapping"]):
        cached.write_text(json.dumps(damaged))
        assert main(args) == 2
        assert capsys.readouterr().out == first
