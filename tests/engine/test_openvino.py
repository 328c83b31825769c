"""OpenVINO paths (inference.openvino_rt): fp32 as eager, bf16 only where the CPU kind has it, int8 quantized by NNCF
with the CPU kind's recipe, cached per weights, size, recipe and CPU kind, checked against its checksum when read,
and what ``auto`` and ``predict --runtime openvino`` do with them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastmtl.engine.predict.job import predict
from fastmtl.inference import openvino_rt
from fastmtl.inference import precision as P
from fastmtl.inference.agreement import agreement, within_tolerance
from fastmtl.inference.path import PrecisionUnavailable, Request, Sample
from fastmtl.inference.resolve import resolve
from fastmtl.runtime import SIMULATED_CPUS, cpu_info
from tests.engine.test_onnxrt import two_conv_mtl_test

pytestmark = pytest.mark.skipif(openvino_rt.missing() is not None, reason=str(openvino_rt.missing()))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return two_conv_mtl_test(img_size=32, in_chans=3, seg_classes=1, cls_classes=2).eval()


def test_fp32_matches_eager_and_pads_a_short_batch(model, module_cache, built_path):
    x = torch.randn(4, 3, 32, 32)
    net = built_path(model, "fp32", x, runtime="openvino")
    with torch.inference_mode():
        ref, out = model(x[:3]), net(x[:3])  # compiled for batch 4: padded, the padding's outputs dropped
    torch.testing.assert_close(out.seg_logits, ref.seg_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.cls_logits, ref.cls_logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="compile applies to the torch runtime; openvino optimizes its own graph"):
        built_path(model, "fp32", x, runtime="openvino", compile=True)
    with pytest.raises(PrecisionUnavailable, match="OpenVINO runs fp32, bf16 and int8 on a CPU, not fp16"):
        built_path(model, "fp16", x, runtime="openvino")


def test_bf16_and_int8_follow_the_cpu_kind_and_the_int8_file_is_cached_and_verified(
    model, module_cache, cpu_kind, built_path
):
    torch.manual_seed(1)
    calibration = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    x = calibration[0]
    with torch.inference_mode():
        ref = model(x)
    if cpu_kind.bf16:
        with torch.inference_mode():
            out = built_path(model, "bf16", x, runtime="openvino")(x)
        assert agreement(ref, out)["mask_agreement"] > 97.0
    else:
        with pytest.raises(PrecisionUnavailable, match="has no native bf16"):
            built_path(model, "bf16", x, runtime="openvino")

    lines = []
    net = built_path(model, "int8", x, runtime="auto", calibration=calibration, refresh=True, log=lines.append)
    xml = openvino_rt.cached_int8(model, x.shape, cpu_kind)
    assert f"-{openvino_rt.RECIPE}-" in xml.name and xml.is_file() and xml.with_suffix(".bin").is_file()
    assert any("int8 (NNCF) calibrated on 8 image(s)" in line and cpu_kind.kind in line for line in lines), lines
    assert json.loads(xml.with_suffix(".json").read_text())["cpu"] == cpu_kind.key
    others = {openvino_rt.cached_int8(model, x.shape, kind) for kind in SIMULATED_CPUS.values()}
    assert len(others) == 3  # one file per CPU kind
    with torch.inference_mode():
        assert agreement(ref, net(x))["mask_agreement"] > 95.0

    again = []
    built_path(model, "int8", x, runtime="openvino", log=again.append)
    assert again == []  # read from the cache: nothing exported or calibrated
    xml.with_suffix(".bin").write_bytes(xml.with_suffix(".bin").read_bytes()[:-8] + b"damaged!")
    repaired = []
    built_path(model, "int8", x, runtime="openvino", log=repaired.append)
    assert "does not match its checksum" in repaired[0] and "calibrated on 4 image(s)" in repaired[1], repaired
    assert openvino_rt._verified(xml)


def test_auto_measures_openvino_beside_the_others_and_a_small_job_reuses_its_decision(model, module_cache, monkeypatch):
    monkeypatch.setenv("FASTMTL_CPU", "avx2")  # no bf16 to measure: the quickest kind
    checkpoint = module_cache / "model.safetensors"
    checkpoint.write_bytes(b"stands in for the checkpoint in the cache key")
    sample = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    lines = []
    path = resolve(Request("auto"), device="cpu", cpu=cpu_info(), n_images=5000, sample=Sample.of(sample),
                   model=model, checkpoint=checkpoint, log=lines.append)  # fmt: skip
    decision = P.Decision(**json.loads(P.decision_file(checkpoint, sample[0].shape, cpu_info()).read_text()))
    assert decision.path(cpu_info()) == path
    measured = [name for name in decision.images_per_s if name != "eager"]
    assert {"fp32+openvino", "int8+openvino"} <= set(measured) and not any("compile" in n for n in measured)
    assert within_tolerance(decision.agreement[decision.name])
    cached = json.loads(P.decision_file(checkpoint, sample[0].shape, cpu_info()).read_text())
    cached.update(precision="int8", runtime="openvino")  # as if OpenVINO's int8 had been the fastest
    P.decision_file(checkpoint, sample[0].shape, cpu_info()).write_text(json.dumps(cached))
    small = P.plan_auto("cpu", checkpoint, sample[0].shape, 10, cpu_info())  # cached files: no compile to pay
    assert small.cached and small.name == "int8+openvino"


def test_predict_runs_openvino_when_asked(tiny_checkpoint, image_files, tmp_path, capsys):
    ckpt = tiny_checkpoint("tiny_mtl_test", img_size=32)
    summary = predict(ckpt, tmp_path / "images", tmp_path / "ov", num_workers=0, batch_size=4, precision="fp32",
                      runtime="openvino")  # fmt: skip
    assert summary.precision == "fp32+openvino" and "path: fp32+openvino" in capsys.readouterr().err
    assert summary.n_images == len(image_files)
    with pytest.raises(ValueError, match="needs the optimized model"):
        predict(ckpt, tmp_path / "images", tmp_path / "o", optimize=False, runtime="openvino", precision="fp32")


_SIGNAL_AFTER_OPENVINO = """
import faulthandler, gc, os, signal
import torch
from fastmtl.inference import openvino_rt
from fastmtl.runtime import cpu_info
from tests.engine.test_onnxrt import two_conv_mtl_test

faulthandler.enable()  # as pytest and `python -X faulthandler` do: a signal stack of Python's own installed first
torch.manual_seed(0)
model, x = two_conv_mtl_test(img_size=32, in_chans=3, seg_classes=1, cls_classes=2).eval(), torch.randn(4, 3, 32, 32)
built = [openvino_rt.build(model, p, x, cpu_info(), log=lambda line: None) for p in ("fp32", "bf16", "int8")]
while built:  # released first built first, as a finished job's paths may be
    built.pop(0)
    gc.collect()
signal.signal(signal.SIGUSR1, lambda *_: print("handler ran"))
os.kill(os.getpid(), signal.SIGUSR1)
data = torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32))
print(sum(len(b) for (b,) in torch.utils.data.DataLoader(data, batch_size=4, num_workers=2)), "images loaded")
"""


def test_python_signal_handlers_survive_openvino_models_released_out_of_order(tmp_path):
    """Every OpenVINO Core's CPU plugin swaps the main thread's signal stack and puts back the one it found when it
    ends; Cores ending out of order left a freed stack installed, and the next Python signal handler (SIGCHLD of a
    DataLoader worker, SIGINT) crashed the process with SIGSEGV. fastmtl uses one Core for the process
    (:func:`openvino_rt.core`); before it, this script died of SIGSEGV."""
    env = {**os.environ, "FASTMTL_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run([sys.executable, "-c", _SIGNAL_AFTER_OPENVINO], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, f"rc {done.returncode} (-11: SIGSEGV)\n{done.stdout}\n{done.stderr[-3000:]}"
    assert done.stdout.splitlines()[-2:] == ["handler ran", "8 images loaded"]
