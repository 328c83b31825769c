"""Loading an ImageNet-format ResNet-34 trunk from a local file."""

from __future__ import annotations

import pytest
import torch
import torchvision

import fastmtl


def test_trunk_weights_from_torchvision_state_dict(tmp_path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet34(weights=None)
    path = tmp_path / "resnet34.pth"
    torch.save({"state_dict": reference.state_dict()}, path)
    model = fastmtl.create_model("resformer_mtl", img_size=32, trunk_weights=str(path))
    report = model.trunk_weights_report
    trunk = model.encoder.trunk.state_dict()
    assert set(report.loaded) == set(trunk) and not report.missing and not report.mismatched
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    for key, value in reference.state_dict().items():
        if not key.startswith("fc."):
            torch.testing.assert_close(trunk[key], value, rtol=0, atol=0)


def test_mismatched_stem_is_reported(tmp_path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    model = fastmtl.create_model("unet_resnet34_mtl", img_size=32, in_chans=1, trunk_weights=str(path))
    assert [m.split()[0] for m in model.trunk_weights_report.mismatched] == ["conv1.weight"]
    assert "mismatched 1: conv1.weight" in str(model.trunk_weights_report)


def test_bad_weight_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        fastmtl.create_model("resnet34_cls", img_size=32, trunk_weights=str(tmp_path / "missing.pth"))
    bad = tmp_path / "other.pth"
    torch.save({"something.weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="no tensor of .*other.pth matches a ResNet-34 trunk"):
        fastmtl.create_model("resnet34_cls", img_size=32, trunk_weights=str(bad))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pth"):
        fastmtl.create_model("resnet34_cls", img_size=32, trunk_weights=str(junk))
