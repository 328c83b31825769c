"""``fastmtl.load_model``: a trained checkpoint back in one line."""

from __future__ import annotations

import pytest
import torch

import fastmtl
from fastmtl.checkpoint.store import CheckpointError, save_checkpoint


def test_load_model_rebuilds_architecture_weights_and_meta(tmp_path) -> None:
    torch.manual_seed(0)
    model = fastmtl.create_model("resformer_mtl", img_size=32, cls_head="single", dfe="three").eval()
    path = save_checkpoint(tmp_path / "best", model, meta={"epoch": 3, "class_names": ["a", "b", "c"]})
    loaded = fastmtl.load_model(path)
    assert not loaded.training and loaded.config == model.config
    assert loaded.checkpoint_meta["epoch"] == 3
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want, got = model(x), loaded(x)
    torch.testing.assert_close(got.seg_logits, want.seg_logits)
    torch.testing.assert_close(got.cls_logits, want.cls_logits)


def test_load_model_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="nope.safetensors does not exist"):
        fastmtl.load_model(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        fastmtl.load_model(bad)
