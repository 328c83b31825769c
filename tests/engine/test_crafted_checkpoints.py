"""Crafted checkpoints: a stored config that asks for an absurd size or channel count, or that does not describe the
stored tensors, is refused with one line naming the file, the tensor and the config before any model is built
(only a skeleton on the ``meta`` device, which allocates nothing)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import fastmtl.checkpoint.store as checkpoint_module
from fastmtl.checkpoint.store import CheckpointError, load_model
from fastmtl.cli import main
from tests.test_cli import _error


def _crafted(source, out, tensors=None, **config):
    with safe_open(str(source), framework="pt") as f:
        metadata = f.metadata()
    metadata["fastmtl_config"] = json.dumps({**json.loads(metadata["fastmtl_config"]), **config})
    save_file(load_file(str(source)) if tensors is None else tensors, str(out), metadata=metadata)
    return out


@pytest.fixture
def builds(monkeypatch):
    """The devices models were built on while loading (a real build is on the CPU)."""
    devices, real = [], checkpoint_module.create_model_from_config

    def build(config):
        devices.append(torch.empty(0).device.type)
        return real(config)

    monkeypatch.setattr(checkpoint_module, "create_model_from_config", build)
    return devices


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"img_size": 1_000_000}, "fastmtl_config.img_size must be an integer from 0 to 8192, not 1000000"),
        ({"in_chans": 100_000}, "fastmtl_config.in_chans must be an integer from 0 to 64, not 100000"),
        ({"cls_classes": 50_000}, "fastmtl_config.cls_classes must be an integer from 0 to 1024"),
    ],
)
def test_absurd_sizes_are_refused_before_anything_is_built(tmp_path, tiny_checkpoint, builds, config, expected):
    path = _crafted(tiny_checkpoint(img_size=32), tmp_path / "crafted.safetensors", **config)
    with pytest.raises(CheckpointError, match=f"checkpoint {path} has an invalid model config: {expected}"):
        load_model(path)
    assert builds == []


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"in_chans": 5},
            r"tensor '[\w.]+' has shape \[\d+, 3, 7, 7\] but its stored config \(unet_resnet34_mtl, "
            r"img_size=32, in_chans=5, seg_classes=1, cls_classes=3\) needs \[\d+, 5, 7, 7\]",
        ),
        ({"cls_classes": 7}, r"has shape \[3(, \d+)*\] but its stored config .*cls_classes=7\) needs \[7"),
    ],
)
def test_a_config_that_does_not_describe_the_weights_is_refused_on_the_meta_device(
    tmp_path, tiny_checkpoint, builds, config, expected
):
    path = _crafted(tiny_checkpoint(img_size=32), tmp_path / "crafted.safetensors", **config)
    with pytest.raises(CheckpointError, match=expected):
        load_model(path)
    assert builds == ["meta"]  # the skeleton only: nothing allocated


def test_missing_and_extra_tensors_are_named(tmp_path, tiny_checkpoint, builds):
    source = tiny_checkpoint(img_size=32)
    tensors = load_file(str(source))
    name = sorted(tensors)[0]
    missing = _crafted(source, tmp_path / "missing.safetensors", {k: v for k, v in tensors.items() if k != name})
    with pytest.raises(CheckpointError, match=f"does not hold tensor '{name}' that its stored config"):
        load_model(missing)
    extra = _crafted(source, tmp_path / "extra.safetensors", {**tensors, "smuggled": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="holds tensor 'smuggled' that its stored config .* does not have"):
        load_model(extra)
    assert builds == ["meta", "meta"]
    load_model(source)  # the genuine file: the skeleton, then the model
    assert builds[2:] == ["meta", "cpu"]


def test_predict_and_export_answer_a_crafted_checkpoint_with_one_line(tmp_path, capsys, tiny_checkpoint):
    path = _crafted(tiny_checkpoint(img_size=32), tmp_path / "crafted.safetensors", in_chans=60)
    (tmp_path / "in.png").write_bytes(b"")
    assert main(["predict", "--checkpoint", str(path), "--input", str(tmp_path / "in.png"),
                 "--out", str(tmp_path / "out")]) == 2  # fmt: skip
    assert "the config does not describe these weights" in _error(capsys)
    assert main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "model.pt2")]) == 2
    assert "the config does not describe these weights" in _error(capsys)
