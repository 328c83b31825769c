"""fastmtl.options: the one home of every vocabulary and range rule, used by the configs, the CLI and the library."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fastmtl.options import (
    AMP_CHOICES,
    COMPILE_MODES,
    DEVICES,
    EXPORT_FORMATS,
    EXPORT_PRECISIONS,
    KERNEL_BACKENDS,
    check_backend,
    check_device_name,
    check_img_size,
    check_range,
)


@pytest.mark.parametrize("side", [16, 32, 224, 8192])
def test_an_image_side_is_a_multiple_of_16_up_to_8192(side):
    assert check_img_size(side) == side


@pytest.mark.parametrize("side", [0, -16, 8, 100, 8208, 224.0, True, "224"])
def test_anything_else_is_refused_naming_the_value_and_the_rule(side):
    with pytest.raises(ValueError, match=rf"--img-size must be a multiple of 16 from 16 up to 8192, got {side!r}"):
        check_img_size(side, "--img-size")


def test_a_models_img_size_follows_the_same_rule_from_32():
    import fastmtl

    check_img_size(32, minimum=32)
    with pytest.raises(ValueError, match="img_size must be a multiple of 16 from 32 up to 8192, got 16"):
        fastmtl.ModelConfig(name="resformer_mtl", img_size=16)
    from fastmtl.engine.train.config import config_from_dict

    with pytest.raises(ValueError, match="config model.img_size must be a multiple of 16 from 32 up to 8192, got 100"):
        config_from_dict({"model": {"img_size": 100}})


def test_the_library_and_the_configs_use_these_vocabularies():
    from fastmtl.cli import build_parser
    from fastmtl.config import ModelConfig
    from fastmtl.engine.train.config import _RUN_CHOICES

    assert _RUN_CHOICES["amp"] is AMP_CHOICES and _RUN_CHOICES["device"] is DEVICES
    assert _RUN_CHOICES["compile_mode"] is COMPILE_MODES
    with pytest.raises(ValueError, match="expected one of reference, triton, auto"):
        ModelConfig(name="resformer_mtl", kernels="cuda")
    export = build_parser()._subparsers._group_actions[0].choices["export"]
    choices = {a.dest: a.choices for a in export._actions if a.choices}
    assert choices == {"format": EXPORT_FORMATS, "precision": EXPORT_PRECISIONS}
    assert check_backend("auto") == "auto" and set(KERNEL_BACKENDS) == {"reference", "triton", "auto"}


def test_device_names_and_ranges():
    for name in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert check_device_name(name) == name
    with pytest.raises(ValueError, match="--device 'gpu' is not a device; expected auto, cpu, cuda, cuda:N or mps"):
        check_device_name("gpu")
    assert check_range(8, "--batch-size", 1, 1024) == 8
    with pytest.raises(ValueError, match="--batch-size must be between 1 and 1024, got 0"):
        check_range(0, "--batch-size", 1, 1024)


def test_the_options_need_no_torch():
    code = "import sys, fastmtl.options, fastmtl.cli_checks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("bad", [96, 100, 0])
def test_predict_refuses_a_size_the_checkpoint_cannot_take_before_building_a_model(
    bad, header_checkpoint, tmp_path, monkeypatch
):
    import fastmtl.checkpoint.store as store
    from fastmtl.engine.predict.job import predict

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the image size was checked")

    monkeypatch.setattr(store, "create_model_from_config", no_model)
    checkpoint = header_checkpoint("resformer_mtl", 64)
    match = rf"--img-size {bad} does not fit checkpoint .*{checkpoint.name}: .*multiples of 64 up to 8192: 64, 128"
    with pytest.raises(ValueError, match=match):
        predict(checkpoint, ["README.md"], tmp_path / "out", img_size=bad)
    assert not (tmp_path / "out").exists()
