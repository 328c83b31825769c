"""Atomic writes (checkpoints, JSON, masks, figures): the usual file mode, and all-or-nothing replacement."""

from __future__ import annotations

import os

import pytest
import torch

from fastmtl.engine.checkpoint import _atomic_save_tensors, atomic_write_bytes


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_written_files_get_the_mode_open_would_give(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "out.json", b"{}")
    _atomic_save_tensors({"w": torch.ones(2)}, tmp_path / "w.safetensors", {})
    expected = 0o666 & ~_umask()  # not mkstemp's private 0600
    for path in (tmp_path / "a" / "out.json", tmp_path / "w.safetensors"):
        assert path.stat().st_mode & 0o777 == expected


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "w.safetensors"
    _atomic_save_tensors({"w": torch.ones(2)}, target, {})
    before = target.read_bytes()
    with pytest.raises(AttributeError):  # fails inside the write
        _atomic_save_tensors({"w": "not a tensor"}, target, {})
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
