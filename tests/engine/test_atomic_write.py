"""Atomic writes (checkpoints, JSON, masks, figures, cache entries): the usual file mode, all-or-nothing."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fastmtl.checkpoint.store import _atomic_save_tensors
from fastmtl.data.cache import ArrayCache
from fastmtl.files import atomic_write_bytes, atomic_write_json, file_mode, json_safe


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_written_files_get_the_mode_open_would_give(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "out.json", b"{}")
    _atomic_save_tensors({"w": torch.ones(2)}, tmp_path / "w.safetensors", {})
    cache = ArrayCache(tmp_path / "cache")
    cache.put("ab" * 32, {"image": np.zeros((2, 2), np.uint8)})
    expected = 0o666 & ~_umask()  # not mkstemp's private 0600
    assert file_mode() == expected
    written = [tmp_path / "a" / "out.json", tmp_path / "w.safetensors", *(tmp_path / "cache").rglob("*.npz")]
    assert len(written) == 3
    for path in written:
        assert path.stat().st_mode & 0o777 == expected, path


def test_the_mode_follows_a_changed_umask(tmp_path):
    old = os.umask(0o077)
    try:
        ArrayCache(tmp_path).put("cd" * 32, {"mask": np.ones((1, 1), np.uint8)})
        atomic_write_bytes(tmp_path / "private.bin", b"x")
    finally:
        os.umask(old)
    for path in [tmp_path / "private.bin", *tmp_path.rglob("*.npz")]:
        assert path.stat().st_mode & 0o777 == 0o600
    assert ArrayCache(tmp_path).get("cd" * 32)["mask"].tolist() == [[1]]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "w.safetensors"
    _atomic_save_tensors({"w": torch.ones(2)}, target, {})
    before = target.read_bytes()
    with pytest.raises(AttributeError):  # fails inside the write
        _atomic_save_tensors({"w": "not a tensor"}, target, {})
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_json_safe_makes_strict_json_or_keeps_nan_on_request(tmp_path):
    value = {1: (math.nan, torch.tensor(2.5)), "a": np.float32(math.inf), "p": Path("x/y"), "t": torch.ones(2)}
    assert json_safe(value) == {"1": [None, 2.5], "a": None, "p": "x/y", "t": [1.0, 1.0]}
    loose = json_safe(value, strict=False)
    assert math.isnan(loose["1"][0]) and loose["a"] == math.inf
    atomic_write_json(tmp_path / "m.json", value)
    assert "NaN" not in (tmp_path / "m.json").read_text()
    assert json.loads((tmp_path / "m.json").read_text())["1"] == [None, 2.5]
