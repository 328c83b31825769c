"""The fast training path on CPU: device input + device step, exact resume, deadlines, validation cadence,
device-side evaluation equal to the DataLoader validation, and the fallbacks of the first step."""

from __future__ import annotations

import math
import time

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import fastmtl
from fastmtl.backend import KernelLayer
from fastmtl.checkpoint.store import read_checkpoint_info
from fastmtl.config import ModelConfig
from fastmtl.engine.distributed import DistInfo
from fastmtl.engine.train.device_loader import decode_split
from fastmtl.engine.train.device_step import evaluate_split, layer_paths
from fastmtl.engine.train.job import train
from fastmtl.engine.train.loaders import build_run_data, make_val_loader
from fastmtl.engine.train.loop import NonFiniteLossError, StepContext, validate
from fastmtl.losses import MTLLoss
from fastmtl.registry import register_model
from tests.engine.test_resume import _assert_same_tensors, _kill_and_resume, _losses
from tests.engine.test_train import TinyMTL, tiny_config


def fast_config(**changes):
    """The tiny config on the fast path: device-resident input (stored at 40 px, warped to 32), device step."""
    base = {"input_pipeline": "device", "device_step": True, "store_size": 40, "sync_every": 2}
    return tiny_config(**{**base, **changes})


@pytest.mark.parametrize("stop_after", [3, 5])  # mid epoch 1 (checkpoint at step 2), mid epoch 2 (at step 4)
def test_fast_path_resume_is_bit_exact(tmp_path, stop_after):
    config = fast_config(epochs=2, max_steps_per_epoch=3, checkpoint_every_steps=2)
    reference, killed = _kill_and_resume(tmp_path, config, stop_after)
    for name in ("last.safetensors", "best.safetensors", "last.train.safetensors"):
        _assert_same_tensors(load_file(reference / name), load_file(killed / name))
    assert _losses(reference) == _losses(killed)


def test_reading_the_losses_less_often_changes_nothing_but_when(tmp_path):
    every_step = train(fast_config(sync_every=1, epochs=2), None, tmp_path / "a")
    rarely = train(fast_config(sync_every=3, epochs=2), None, tmp_path / "b")
    _assert_same_tensors(load_file(tmp_path / "a" / "last.safetensors"), load_file(tmp_path / "b" / "last.safetensors"))
    for x, y in zip(every_step["history"], rarely["history"], strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-6)
    assert "device step: eager, fused AdamW, losses read every 3" == rarely["step"]
    assert rarely["history"][-1]["lr"] == every_step["history"][-1]["lr"] > 0


def test_non_finite_loss_is_caught_at_the_next_read(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss in the \d step\(s\) up to epoch 1"):
        train(fast_config(lr=1e30, epochs=3, sync_every=2), None, tmp_path)


def test_validation_cadence_and_epoch_end_checkpoints(tmp_path):
    result = train(fast_config(epochs=3, val_every_epochs=2, checkpoint_every_epochs=0), None, tmp_path / "run")
    validated = [r["epoch"] for r in result["history"] if "val_ji" in r]
    assert validated == [2, 3] and result["best_epoch"] in (2, 3)  # every 2nd epoch and the last
    assert all("validation_s" in r for r in result["history"] if r["epoch"] in validated)
    assert (tmp_path / "run" / "last.safetensors").is_file()  # written when the run ends
    # killed after epoch 1 without periodic checkpoints: nothing to resume from
    train(fast_config(epochs=3, checkpoint_every_epochs=0, stop_after_steps=5), None, tmp_path / "killed")
    assert not (tmp_path / "killed" / "last.safetensors").exists()


def test_a_deadline_stops_cleanly_and_saves(tmp_path):
    result = train(fast_config(epochs=3), None, tmp_path, deadline=time.monotonic())
    assert result["stopped_early"] and result["global_step"] == 1
    assert (tmp_path / "last.safetensors").is_file()


def _ctx(model: nn.Module, seg_classes: int = 1) -> StepContext:
    return StepContext(model, model, None, None, MTLLoss(seg_classes, 0.25), DistInfo())


def test_device_evaluation_equals_the_dataloader_validation():
    config = tiny_config(data_options={"n": 11}, eval_batch_size=4)
    data = build_run_data(config, None)
    torch.manual_seed(0)
    model = fastmtl.create_model("tiny_mtl_test", img_size=32, seg_classes=1, cls_classes=3)
    ctx = _ctx(model)
    expected = validate(ctx, make_val_loader(data, config, DistInfo()), data.class_names, 1)
    got = evaluate_split(model, decode_split(data.val, "cpu", 1), ctx=ctx, img_size=(32, 32), normalize="imagenet",
                         batch_size=4, class_names=data.class_names, seg_classes=1)  # fmt: skip
    assert got.keys() == expected.keys() and got["n_seg_images"] == 11
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-5, nan_ok=True), key


def test_a_compile_failure_falls_back_to_the_eager_step(tmp_path, monkeypatch, capsys):
    def broken(fn, **kwargs):
        def fail(*args, **kw):
            raise RuntimeError("inductor could not lower this")

        return fail

    monkeypatch.setattr(torch, "compile", broken)
    result = train(fast_config(epochs=1, compile=True), None, tmp_path)
    assert result["epochs_completed"] == 1 and "compile failed: RuntimeError" in result["step"]
    assert "the compiled step failed (RuntimeError: inductor could not lower this)" in capsys.readouterr().out


class _FlakyKernel(KernelLayer):
    """A kernel-backed layer whose 'Triton' path raises, as a kernel that does not build on a new GPU would;
    ``only_eval``: only its inference kernels fail."""

    def __init__(self, kernels: str, only_eval: bool = False) -> None:
        super().__init__(kernels)
        self.only_eval = only_eval

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernels == "triton" and not (self.only_eval and self.training):
            raise RuntimeError("PassManager::run failed")
        return x


class _TinyWithKernel(TinyMTL):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.flaky = _FlakyKernel(config.kernels, only_eval=config.name == "tiny_eval_kernel_test")

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return super().forward_features(self.flaky(x))


@register_model(("img_size", "in_chans", "seg_classes", "cls_classes"))
def tiny_kernel_test(**kwargs) -> _TinyWithKernel:
    """Test-only: the tiny model plus a kernel-backed layer that fails on its Triton path."""
    return _TinyWithKernel(
        ModelConfig(name="tiny_kernel_test", dfe="none", drop_path_rate=0.0, kernels="triton", **kwargs)
    )


@register_model(("img_size", "in_chans", "seg_classes", "cls_classes"))
def tiny_eval_kernel_test(**kwargs) -> _TinyWithKernel:
    """Test-only: the tiny model plus a kernel-backed layer whose inference kernels fail."""
    return _TinyWithKernel(
        ModelConfig(name="tiny_eval_kernel_test", dfe="none", drop_path_rate=0.0, kernels="triton", **kwargs)
    )


def test_a_kernel_failure_in_validation_falls_back_too(tmp_path, capsys):
    result = train(fast_config(model="tiny_eval_kernel_test", epochs=2), None, tmp_path)
    assert result["epochs_completed"] == 2 and "val_ji" in result["history"][0]
    assert capsys.readouterr().out.count("the Triton kernels failed in validation (RuntimeError") == 1


def test_a_kernel_failure_falls_back_to_the_reference_layers(tmp_path, capsys):
    result = train(fast_config(model="tiny_kernel_test", epochs=1), None, tmp_path)
    assert result["epochs_completed"] == 1 and "Triton kernels failed" in result["step"]
    assert "the Triton kernels failed in training (RuntimeError: PassManager::run failed)" in capsys.readouterr().out
    config, _ = read_checkpoint_info(tmp_path / "last.safetensors")
    assert config.kernels == "reference"  # the saved config says what ran


def test_layer_paths_name_the_implementation_of_each_kind_of_layer():
    with torch.device("meta"):
        model = fastmtl.create_model("resformer_mtl", img_size=32, kernels="auto")
    cpu = layer_paths(model, torch.device("cpu"), "eager", None)
    assert cpu["WindowAttention x8"].startswith("PyTorch reference") and cpu["DFE x4"].startswith("PyTorch reference")
    assert cpu["step"] == "eager" and "fp32" in cpu[next(k for k in cpu if k.startswith("Conv x"))]
    gpu = layer_paths(model, torch.device("cuda"), "compiled", torch.bfloat16)
    assert gpu["WindowAttention x8"].startswith("Triton") and gpu["DFE x4"].startswith("Triton")
    conv_cpu, conv_gpu = (int(next(k for k in p if k.startswith("Conv x"))[6:]) for p in (cpu, gpu))
    assert conv_gpu < conv_cpu  # the DFE convolutions run inside the Triton kernels
    assert "bfloat16 autocast" in gpu[f"Conv x{conv_gpu}"]


@pytest.mark.slow
def test_compiled_step_trains_on_cpu(tmp_path):
    """torch.compile of the step's forward + loss really runs (Inductor's CPU backend) and matches eager closely."""
    eager = train(fast_config(epochs=1, max_steps_per_epoch=3), None, tmp_path / "eager")
    compiled = train(fast_config(epochs=1, max_steps_per_epoch=3, compile=True), None, tmp_path / "compiled")
    assert compiled["step"].startswith("device step: torch.compile(mode='default')")
    assert math.isclose(compiled["history"][0]["train_loss"], eager["history"][0]["train_loss"], rel_tol=1e-3)


@pytest.mark.parametrize(("pipeline", "device_step"), [("device", False), ("loader", True)])
def test_the_input_path_and_the_step_combine_freely(tmp_path, pipeline, device_step):
    result = train(fast_config(input_pipeline=pipeline, device_step=device_step, epochs=2), None, tmp_path)
    assert result["epochs_completed"] == 2 and all(math.isfinite(r["train_loss"]) for r in result["history"])
    assert result["step"].startswith("device step" if device_step else "classic step")
