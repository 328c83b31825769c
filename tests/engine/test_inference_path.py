"""One inference path per job: a request is checked once (before any model is loaded), resolved once into a frozen
:class:`~fastmtl.inference.path.InferencePath`, built once, and what was built is what the runner runs."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from fastmtl.cli import main
from fastmtl.engine.predict import job
from fastmtl.inference import onnxrt
from fastmtl.inference import path as path_module
from fastmtl.inference import resolve as resolve_module
from fastmtl.inference.path import InferencePath, PrecisionUnavailable, Request, Sample
from fastmtl.inference.resolve import resolve
from fastmtl.options import PRECISIONS
from fastmtl.runtime import SIMULATED_CPUS
from tests.engine.test_train import tiny_mtl_test  # noqa: F401 - registers the tiny test model


def _spy(monkeypatch: pytest.MonkeyPatch, module, name: str) -> list[tuple]:
    """Wraps ``module.name`` so that each call's (args, kwargs, result) is recorded in the returned list."""
    calls, real = [], getattr(module, name)

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    monkeypatch.setattr(module, name, spy)
    return calls


@pytest.mark.parametrize(
    "precision, runtime",
    [
        ("fp32", "torch"),
        ("auto", "auto"),
        ("bf16", "auto"),  # not native on the simulated AVX2 CPU: falls back to fp32, still resolved once
        pytest.param("int8", "auto", marks=pytest.mark.skipif(onnxrt.missing() is not None, reason="no onnxruntime")),
    ],
)
def test_predict_checks_and_resolves_a_request_once_and_runs_what_was_built(
    precision, runtime, tiny_checkpoint, image_files, tmp_path, monkeypatch
):
    monkeypatch.setenv("FASTMTL_CPU", "avx2")
    checks = _spy(monkeypatch, path_module, "check_inference")
    resolved = _spy(monkeypatch, job, "resolve")
    built = _spy(monkeypatch, job, "build")
    plans = _spy(monkeypatch, resolve_module, "plan_auto")
    runtimes = _spy(monkeypatch, resolve_module, "auto_runtime")
    runners = _spy(monkeypatch, job, "ChunkedRunner")
    summary = predict_tiny(tiny_checkpoint, tmp_path, precision=precision, runtime=runtime)

    assert len(checks) == 1 and len(resolved) == 1 and len(built) == 1 and len(runners) == 1
    path = resolved[0][2]
    assert isinstance(path, InferencePath) and path.precision != "auto" and path.runtime != "auto"
    assert built[0][0][0] is path  # the frozen path reaches the build unchanged ...
    assert runners[0][0][0] is built[0][2]  # ... and the runner runs exactly what was built
    assert summary.precision == path.name and summary.n_images == len(image_files)
    assert len(plans) == (precision == "auto") and len(runtimes) == (runtime == "auto" and precision != "auto")


def predict_tiny(tiny_checkpoint, tmp_path, **kwargs):
    ckpt = tiny_checkpoint("tiny_mtl_test", img_size=32)
    return job.predict(ckpt, tmp_path / "images", tmp_path / "out", num_workers=0, batch_size=4, **kwargs)


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"precision": "fp8"}, "unknown precision 'fp8'; expected one of auto, fp32, bf16, fp16, int8"),
        ({"runtime": "tensorrt"}, "unknown runtime 'tensorrt'; expected one of auto, torch, onnxruntime, openvino"),
        ({"precision": "int8", "optimize": False}, "precision 'int8' on runtime 'auto' needs the optimized model"),
        ({"runtime": "openvino", "compile": True}, "compile applies to the torch runtime; openvino optimizes its"),
    ],
)
def test_a_bad_request_is_refused_naming_the_value_before_any_model_is_loaded(
    request_, message, tiny_checkpoint, image_files, tmp_path, monkeypatch
):
    monkeypatch.setattr(job, "load_model", lambda *a, **k: pytest.fail("a model was loaded for a bad request"))
    with pytest.raises(ValueError, match=re.escape(message)):
        predict_tiny(tiny_checkpoint, tmp_path, **request_)
    assert not (tmp_path / "out").exists()  # nothing written either


def test_the_command_line_offers_the_same_choices(tmp_path, capsys):
    argv = ["predict", "--checkpoint", "x", "--input", "y", "--out", str(tmp_path / "o"), "--precision", "fp8"]
    with pytest.raises(SystemExit) as exit:
        main(argv)
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert exit.value.code == 2 and "--precision: invalid choice: 'fp8'" in line
    assert all(name in line for name in PRECISIONS)  # the library's vocabulary (argparse quotes it its own way)


def _nothing_reads(n: int) -> list[torch.Tensor]:
    return []


def test_a_resolved_path_is_frozen_and_says_what_it_runs_in():
    avx2, lines = SIMULATED_CPUS["avx2"], []
    sample = Sample((2, 3, 32, 32), _nothing_reads)

    def resolved(request: Request, device: str, **kwargs) -> InferencePath:
        return resolve(request, device=device, cpu=avx2, n_images=2, sample=sample, log=lines.append, **kwargs)

    cuda = resolved(Request(), "cuda")  # auto on CUDA: bf16 autocast, no measuring
    assert (cuda.name, cuda.dtype, cuda.cpu) == ("bf16", torch.bfloat16, avx2)
    as_saved = resolved(Request(optimize=False), "cuda")
    assert as_saved.name == "bf16 (model as saved)" and as_saved.dtype == torch.bfloat16
    assert resolved(Request(optimize=False), "cpu").dtype is None  # fp32 on a CPU
    assert resolved(Request("fp16"), "cuda") == InferencePath("fp16", "torch", False, avx2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cuda.precision = "fp32"

    with pytest.raises(PrecisionUnavailable, match="int8 is a CPU path"):
        resolved(Request("int8"), "cuda", fallback=False)
    assert resolved(Request("bf16", "torch"), "cpu") == InferencePath("fp32", "torch", False, avx2)
    assert "precision bf16 is not available here: this CPU (simulated AVX2 CPU, AVX2) has no native bf16" in lines[-1]
    assert resolved(Request("fp32", "torch", compile=True), "cpu") == InferencePath("fp32", "torch", False, avx2)
    assert lines[-1] == "no readable image to calibrate or compile on; running fp32"
    with pytest.raises(ValueError, match="precision auto on a CPU needs the model and its checkpoint"):
        resolved(Request(), "cpu")


def test_a_sample_holds_out_the_images_after_the_calibration_ones(tmp_path):
    from PIL import Image

    from fastmtl.data.images import ImagePaths
    from fastmtl.inference.path import CALIBRATION_IMAGES, CHECK_IMAGES

    folder = tmp_path / "images"
    folder.mkdir()
    total = CALIBRATION_IMAGES + 10  # fewer than CHECK_IMAGES after the calibration ones: all of them held out
    for i in range(total):
        Image.new("RGB", (8, 8), (i, 255 - i, 0)).save(folder / f"im{i:03d}.png")
    data = ImagePaths(sorted(folder.glob("*.png")), (8, 8))
    sample = Sample.from_images(data, batch_size=5)
    assert [b.shape[0] for b in sample.batches] == [5] * 7  # 32 rounded up to whole batches: 35 images
    assert [b.shape[0] for b in sample.held_out] == [5, 2]  # the other 7, none of the calibration images
    first = torch.cat(sample.batches)
    assert not any(torch.equal(image, seen) for image in torch.cat(sample.held_out) for seen in first)

    other = tmp_path / "calibration"
    other.mkdir()
    for i in range(CALIBRATION_IMAGES):
        Image.new("RGB", (8, 8), (0, i, 255 - i)).save(other / f"c{i:03d}.png")
    sample = Sample.from_images(data, batch_size=5, calibrate=other)  # --calibrate: held out are the job's first
    assert sample.refresh and [b.shape[0] for b in sample.batches] == [5] * 6 + [2]
    assert torch.equal(torch.cat(sample.held_out), torch.stack([data[i]["image"] for i in range(35)]))

    given = [torch.randn(4, 3, 8, 8) for _ in range(CALIBRATION_IMAGES // 4)]
    assert Sample.of(given).held_out == []  # batches given without held-out ones: auto compares on them
    held = [torch.randn(4, 3, 8, 8) for _ in range(CHECK_IMAGES // 4)]
    sample = Sample.of(given, held_out=held)
    assert sample.batches == given and all(a is b for a, b in zip(sample.held_out, held, strict=True))
