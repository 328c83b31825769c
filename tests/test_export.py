"""fastmtl.inference.export: AOTInductor packages (parity with eager, metadata) and ONNX export (CPU)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastmtl
from fastmtl.checkpoint.store import load_model, save_checkpoint
from fastmtl.cli import main
from fastmtl.data.transforms import normalize_image
from fastmtl.files import exclusive_folder
from fastmtl.inference.export import (
    ExportCheckError,
    _check,
    export,
    export_metadata,
    normalization_stats,
    output_lock,
)
from fastmtl.options import MAX_EXPORT_BATCH

HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript"))


def _randomise_bn(model: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = _randomise_bn(fastmtl.create_model("unet_resnet34_mtl", img_size=32))
    meta = {"class_names": ["mel", "sk", "nev"], "normalize": "unit"}
    return save_checkpoint(tmp_path_factory.mktemp("export") / "tiny", model, meta=meta)


@pytest.fixture(scope="module")
def aoti_export(checkpoint, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``fastmtl export --format aoti`` run as a user runs it, on a machine with a CUDA toolkit but no GPU in use
    (``CUDA_HOME`` set: torch.utils.cpp_extension warns "No CUDA runtime is found" when it is imported then)."""
    folder = tmp_path_factory.mktemp("aoti")
    out = folder / "tiny.pt2"
    argv = ["export", "--checkpoint", str(checkpoint), "--format", "aoti", "--out", str(out), "--batch-size", "2"]
    done = subprocess.run([sys.executable, "-m", "fastmtl.cli", *argv], env={**os.environ, "CUDA_HOME": str(folder)},
                          capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return out, done


@pytest.fixture(scope="module")
def aoti_package(aoti_export) -> Path:
    return aoti_export[0]


@pytest.mark.slow
def test_an_aoti_export_says_what_it_does_and_how_long_it_took(aoti_export) -> None:
    out, done = aoti_export
    steps = [line.removeprefix("fastmtl export: ") for line in done.stdout.splitlines()]
    expected = [r"loading .*\.safetensors \.\.\.", r"loaded in \d+\.\d s",
                r"tracing unet_resnet34_mtl at 32 px, batch 1\.\.1024 with torch\.export \.\.\.",
                r"traced in \d+\.\d s",
                r"compiling it for cpu with AOTInductor \(minutes on a CPU\) \.\.\.",
                rf"compiled {re.escape(str(out))} in \d+\.\d s",
                r"checking it against the eager model at batch 2 and 3 \.\.\.", r"checked in \d+\.\d s",
                rf"exported {re.escape(str(out))} \(outputs match the eager model\)"]  # fmt: skip
    assert len(steps) == len(expected) and all(re.fullmatch(e, s) for e, s in zip(expected, steps)), done.stdout
    assert "No CUDA runtime is found" not in done.stderr, done.stderr


def test_the_no_cuda_runtime_warning_is_dropped_only_while_exporting_for_the_cpu(tmp_path, monkeypatch) -> None:
    """What an export for the CPU filters: that one message of torch.utils.cpp_extension's logger, nothing else,
    and only during the export (the warning comes from importing that module, which Inductor does)."""
    import logging

    from torch.utils import cpp_extension

    from fastmtl.inference.export import _quiet_cpu_cuda_home

    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    logger, seen = logging.getLogger("torch.utils.cpp_extension"), []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        with _quiet_cpu_cuda_home(torch.device("cpu")):
            cpp_extension._find_cuda_home()
            logger.warning("another warning")
        with _quiet_cpu_cuda_home(torch.device("cuda")):
            cpp_extension._find_cuda_home()
        cpp_extension._find_cuda_home()
    finally:
        logger.removeHandler(handler)
    warning = f"No CUDA runtime is found, using CUDA_HOME='{tmp_path}'"
    assert seen == ["another warning", warning, warning]


def test_metadata_names_come_from_the_checkpoint() -> None:
    """The training dataset's names travel through the checkpoint; an old checkpoint without them gets generic
    names (never another dataset's, such as ISIC's for any three-class model)."""
    model = fastmtl.create_model("unet_resnet34_mtl", img_size=32, seg_classes=4)
    names = {"class_names": ["IRF", "SRF", "PED"], "seg_class_names": ["irf", "srf", "ped"]}
    meta = export_metadata(model, names, 32)
    assert (meta["class_names"], meta["seg_class_names"], meta["seg_classes"]) == ("IRF,SRF,PED", "irf,srf,ped", "4")
    old = export_metadata(model, {}, 32)
    assert (old["class_names"], old["seg_class_names"]) == ("class0,class1,class2", "class1,class2,class3")


@pytest.mark.slow
def test_aoti_package_matches_eager_at_any_batch(checkpoint, aoti_package) -> None:
    from torch._inductor import aoti_load_package

    model, _ = load_model(checkpoint)
    package = aoti_load_package(str(aoti_package))
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        with torch.inference_mode():
            ref = model(x)
        seg, cls = package(x)
        torch.testing.assert_close(seg, ref.seg_logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(cls, ref.cls_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_aoti_package_metadata(aoti_package) -> None:
    from torch._inductor import aoti_load_package

    meta = aoti_load_package(str(aoti_package)).get_metadata()
    assert meta["model"] == "unet_resnet34_mtl" and meta["img_size"] == "32" and meta["in_chans"] == "3"
    assert meta["outputs"] == "seg_logits,cls_logits" and meta["class_names"] == "mel,sk,nev"
    assert [float(v) for v in meta["mean"].split(",")] == [0.0, 0.0, 0.0]
    assert [float(v) for v in meta["std"].split(",")] == [255.0, 255.0, 255.0]


@pytest.mark.parametrize("mode, channels", [("imagenet", 3), ("imagenet", 1), ("raw", 3), ("unit", 1)])
def test_normalization_stats_reproduce_normalize_image(mode: str, channels: int) -> None:
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 256).expand(channels, 2, 256)
    mean, std = normalization_stats(mode, channels)
    mean, std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]  # back to float32, exactly
    assert torch.equal((pixels.float() - mean) / std, normalize_image(pixels, mode))


def test_parity_check_reports_a_mismatch() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 1)).eval()

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return fastmtl.MTLOutput(self.net(x), None)

    eager = Wrapped()
    example = torch.zeros(2, 3, 8, 8)
    _check(lambda x: [model(x)], eager, example, ["seg_logits"], [1, 2])  # identical: passes
    with pytest.raises(ExportCheckError, match="seg_logits differs from eager at batch 1"):
        _check(lambda x: [model(x) + 1e-2], eager, example, ["seg_logits"], [1])


def test_unknown_format(checkpoint, tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export(checkpoint, tmp_path / "m.tflite", format="tflite")


def test_onnx_without_packages_says_what_to_install(checkpoint, tmp_path, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install onnxscript \(or pip install 'fastmtl\[export\]'\)"):
        export(checkpoint, tmp_path / "m.onnx", format="onnx")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ONNX, reason="ONNX export needs onnx and onnxscript (pip install 'fastmtl[export]')")
def test_onnx_export(checkpoint, tmp_path) -> None:
    import onnx

    out = export(checkpoint, tmp_path / "m.onnx", format="onnx", batch_size=2)  # checked by onnxruntime if present
    proto = onnx.load(str(out))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["outputs"] == "seg_logits,cls_logits" and props["img_size"] == "32"
    assert [o.name for o in proto.graph.output] == ["seg_logits", "cls_logits"]


def test_a_second_export_to_the_same_file_is_refused_naming_the_holder(checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "model.pt2"
    with output_lock(out):
        assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--no-check"]) == 2
        err = capsys.readouterr().err.strip()
        with pytest.raises(ValueError, match=r"\.model\.pt2\.lock is in use by another fastmtl job \(export, pid "):
            export(checkpoint, out, format="onnx")
    assert err.startswith("fastmtl: error: ") and len(err.splitlines()) == 1
    assert f".model.pt2.lock is in use by another fastmtl job (export, pid {os.getpid()}" in err
    assert not out.exists() and not (tmp_path / ".model.pt2.lock").exists()  # released: nothing left behind
    with exclusive_folder(tmp_path, "train"), output_lock(out), output_lock(tmp_path / "other.onnx"):
        pass  # per file: a run writing into the folder and exports to other files do not hold it up


def test_an_export_output_that_is_a_folder_is_refused(checkpoint, tmp_path) -> None:
    with pytest.raises(IsADirectoryError, match=f"export output {tmp_path} is a folder; expected the file"):
        export(checkpoint, tmp_path)


@pytest.mark.parametrize("batch_size", [0, MAX_EXPORT_BATCH + 1])
def test_a_batch_outside_the_dynamic_range_is_refused_before_any_work(checkpoint, tmp_path, batch_size) -> None:
    with pytest.raises(ValueError, match=f"batch_size must be between 1 and {MAX_EXPORT_BATCH}, got {batch_size}"):
        export(checkpoint, tmp_path / "m.pt2", batch_size=batch_size)
    assert list(tmp_path.iterdir()) == []  # no lock, no file


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ONNX or importlib.util.find_spec("onnxruntime") is None,
                    reason="an int8 export needs onnx, onnxscript and onnxruntime (fastmtl[export])")  # fmt: skip
def test_int8_onnx_export_is_calibrated_checked_and_keeps_the_metadata(checkpoint, tmp_path, capsys) -> None:
    import numpy as np
    import onnx
    from PIL import Image

    images = tmp_path / "calibration"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):  # smooth blobs rather than noise: images a lesion model could see
        yy, xx = np.mgrid[:48, :48]
        blob = np.exp(-((yy - rng.integers(12, 36)) ** 2 + (xx - rng.integers(12, 36)) ** 2) / 120.0)
        rgb = np.stack([200 - 120 * blob, 160 - 100 * blob, 140 - 90 * blob], -1) + rng.normal(0, 4, (48, 48, 3))
        Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(images / f"case{i}.png")
    out = tmp_path / "model-int8.onnx"
    argv = ["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--precision", "int8", "--out", str(out)]
    assert main([*argv, "--calibrate", str(images)]) == 0
    printed = capsys.readouterr().out
    assert "int8 against the eager model on 10 calibration image(s): mask_dsc" in printed
    assert f"exported {out} (int8, within tolerance)" in printed
    proto = onnx.load(str(out))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["precision"] == "int8" and props["img_size"] == "32" and props["class_names"] == "mel,sk,nev"
    assert any(node.op_type == "QuantizeLinear" for node in proto.graph.node)
    assert not list(tmp_path.glob(".*.tmp"))  # written whole through a temporary file

    assert main(argv) == 2  # no calibration images
    assert "use --format onnx and --calibrate PATH" in capsys.readouterr().err
    with pytest.raises(ValueError, match="AOTInductor packages are fp32"):
        export(checkpoint, tmp_path / "m.pt2", precision="int8", calibrate=images)
