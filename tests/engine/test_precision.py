"""Precision paths (inference.path, .build, .precision) and ``predict --precision``: each path against fp32 on a
tiny model, the ``auto`` decision measured, cached and reused, and a CPU without native bf16 falling back with a
message."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from fastmtl.engine.predict.job import predict
from fastmtl.inference import onnxrt, openvino_rt
from fastmtl.inference import precision as P
from fastmtl.inference.agreement import agreement, within_tolerance
from fastmtl.inference.build import build
from fastmtl.inference.path import PrecisionUnavailable, Request, Sample, auto_runtime, path_name
from fastmtl.inference.resolve import resolve
from fastmtl.options import PRECISIONS, RUNTIMES
from fastmtl.runtime import SIMULATED_CPUS, cpu_info
from tests.engine.test_train import tiny_mtl_test

needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None,
                                   reason="int8 needs torchao (pip install 'fastmtl[int8]')")  # fmt: skip
needs_onnxruntime = pytest.mark.skipif(onnxrt.missing() is not None, reason=str(onnxrt.missing()))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return tiny_mtl_test(img_size=32, in_chans=3, seg_classes=1, cls_classes=2).eval()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMTL_CACHE", str(tmp_path / "cache"))


def _reference(model, x):
    with torch.inference_mode():
        return model(x)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_fp32_path_matches_the_model_and_pads_short_batches(tiny, compiled, built_path):
    x = torch.randn(4, 3, 32, 32)
    net = built_path(tiny, "fp32", x, compile=compiled)
    with torch.inference_mode():
        short = net(x[:3])  # the last batch of a job: padded to the compiled shape, padding dropped
    ref = _reference(tiny, x[:3])
    assert short.seg_logits.shape == ref.seg_logits.shape
    torch.testing.assert_close(short.seg_logits, ref.seg_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(short.cls_logits, ref.cls_logits, atol=1e-4, rtol=1e-4)


@needs_torchao
def test_int8_path_stays_close_to_fp32(tiny, built_path):
    calibration = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    net = built_path(tiny, "int8", calibration[0], calibration=calibration)
    x = torch.randn(5, 3, 32, 32)  # more than the compiled batch: run in chunks
    with torch.inference_mode():
        out = net(x)
    measured = agreement(_reference(tiny, x), out)
    assert out.seg_logits.shape == (5, 1, 32, 32) and out.seg_logits.dtype == torch.float32
    assert measured["mask_agreement"] > 97.0 and measured["prob_max_abs"] < 0.02, measured


def test_bf16_on_a_cpu_without_it_is_refused_by_the_path_and_falls_back_in_predict(
    tiny, tiny_checkpoint, image_files, tmp_path, monkeypatch, capsys, built_path
):
    monkeypatch.setenv("FASTMTL_CPU", "avx2")  # an AVX2-only CPU, whatever CPU runs the test
    with pytest.raises(PrecisionUnavailable, match="no native bf16"):
        built_path(tiny, "bf16", torch.randn(2, 3, 32, 32))
    with pytest.raises(PrecisionUnavailable, match="CUDA only"):
        built_path(tiny, "fp16", torch.randn(2, 3, 32, 32))
    ckpt = tiny_checkpoint("tiny_mtl_test", img_size=32)
    summary = predict(ckpt, tmp_path / "images", tmp_path / "out", num_workers=0, precision="bf16")
    assert "no native bf16" in capsys.readouterr().err and summary.precision == "fp32"
    assert summary.n_images == len(image_files)


def test_bf16_runs_where_the_cpu_kind_has_it(tiny, cpu_kind, built_path):
    x = torch.randn(4, 3, 32, 32)
    if not cpu_kind.bf16:
        with pytest.raises(PrecisionUnavailable, match=f"this CPU \\({cpu_kind.name}, AVX2\\) has no native bf16"):
            built_path(tiny, "bf16", x)
        return
    with torch.inference_mode():  # emulated where the real CPU lacks it: slower, the same numbers
        out = built_path(tiny, "bf16", x)(x)
    assert agreement(_reference(tiny, x), out)["mask_agreement"] > 97.0


@pytest.mark.parametrize("installed", [(), ("onnxruntime",), ("onnxruntime", "openvino")],
                         ids=["torch-only", "onnxruntime", "openvino"])  # fmt: skip
def test_auto_candidates_follow_the_cpu_kind_and_the_runtimes_installed(cpu_kind, installed, monkeypatch):
    monkeypatch.setattr(onnxrt, "missing", lambda: None if "onnxruntime" in installed else "no onnxruntime")
    monkeypatch.setattr(openvino_rt, "missing", lambda: None if "openvino" in installed else "no openvino")
    names = [path.name for path in P.candidates(torch.device("cpu"), cpu_info())]
    assert names[0] == "fp32" and len(set(names)) == len(names)
    assert ("bf16+compile" in names or "bf16+openvino" in names) == cpu_kind.bf16  # bf16 only where native
    torchao = importlib.util.find_spec("torchao") is not None
    if "openvino" in installed:  # its bf16 and int8 beat torch's compiled paths, which every process pays for
        assert {"fp32+openvino", "int8+openvino", "int8+onnxruntime"} <= set(names)
        assert not any("compile" in n for n in names) and "int8" not in names
    elif "onnxruntime" in installed:  # torchao's int8 is measured only where VNNI makes it a contender
        assert {"fp32+onnxruntime", "int8+onnxruntime"} <= set(names) and "fp32+compile" not in names
        assert ("int8" in names) == (cpu_kind.int8_vnni and torchao)
    else:
        assert "fp32+compile" in names and ("int8" in names) == torchao
    assert auto_runtime("int8", torch.device("cpu")) == (["torch", *installed])[-1]
    checkpoint = Path(__file__)  # the decision is cached per CPU kind (and per runtimes installed)
    keys = {P.decision_file(checkpoint, (8, 3, 224, 224), kind) for kind in SIMULATED_CPUS.values()}
    assert len(keys) == len(SIMULATED_CPUS)


def _auto(model, checkpoint, sample: Sample, n_images: int, log):
    return resolve(Request("auto"), device="cpu", cpu=cpu_info(), n_images=n_images, sample=sample, model=model,
                   checkpoint=checkpoint, log=log)  # fmt: skip


def test_auto_measures_caches_and_reuses_its_decision(tiny, tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"stands in for the checkpoint in the cache key")
    sample = Sample.of([torch.randn(4, 3, 32, 32) for _ in range(2)], held_out=[torch.randn(4, 3, 32, 32)])
    lines = []
    path = _auto(tiny, checkpoint, sample, 5000, lines.append)
    cache = P.decision_file(checkpoint, sample.shape, cpu_info())
    decision = P.Decision(**json.loads(cache.read_text()))
    assert decision.path(cpu_info()) == path and "eager" in decision.images_per_s
    measured = [p.name for p in P.candidates(torch.device("cpu"), cpu_info())]
    assert set(decision.images_per_s) == {"eager", *measured}  # every candidate was built and timed
    (plan,) = [line for line in lines if line.startswith("auto: a job of")]
    assert plan.startswith(f"auto: a job of 5000 images: timing {', '.join(measured)} against eager fp32")
    assert "on 4 of its images (not the ones int8 calibrates on)" in plan and "reuse the decision" in plan
    assert lines[-1] == f"auto: {decision.describe()}"
    assert "fp32" in measured and ("fp32+onnxruntime" in measured or "fp32+compile" in measured)
    # compared with fp32 fastest first, up to the one taken: every path faster than it was compared (and was outside
    # tolerance), the slower ones need not be
    faster = [n for n in measured if decision.images_per_s[n] > decision.images_per_s[decision.name]]
    assert set(decision.agreement) == {decision.name, *faster}
    assert not any(within_tolerance(decision.agreement[n]) for n in faster)
    for agreed in decision.agreement.values():
        assert set(agreed) >= {"mask_dsc", "mask_agreement", "prob_mean_abs", "prob_max_abs"}
    assert within_tolerance(decision.agreement[decision.name]), decision
    timed = [line.split()[4] for line in lines if line.startswith("auto: building and timing")]
    assert timed[0].startswith("int8") and timed[-1].startswith("fp32")  # the likely fastest first
    net = build(path, tiny, sample)
    assert net is sample.built[path]  # the measured path is not built a second time
    with torch.inference_mode():
        assert agreement(_reference(tiny, sample.batches[1]), net(sample.batches[1]))["mask_agreement"] > 97.0

    again = []
    reused = _auto(tiny, checkpoint, Sample.of(sample.batches), 5000, again.append)
    assert reused == path and again[-1].endswith("(cached decision)")
    assert not any("measuring" in line for line in again)  # nothing measured the second time

    checkpoint.write_bytes(b"a different checkpoint")  # new size and mtime: a new key, no stale decision
    assert P.decision_file(checkpoint, sample.shape, cpu_info()) != cache


def test_auto_takes_fp32_for_a_small_job_and_says_why(tiny, tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"x")
    lines = []
    path = _auto(tiny, checkpoint, Sample.of([torch.randn(2, 3, 32, 32)]), 20, lines.append)
    assert path.precision == "fp32" and "below 1000" in lines[-1]
    assert not P.decision_file(checkpoint, (2, 3, 32, 32), cpu_info()).exists()


def test_a_small_job_reuses_a_cached_decision_only_when_it_compiles_nothing(tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"x")
    cpu = cpu_info()
    shape, cache = (2, 3, 32, 32), P.decision_file(checkpoint, (2, 3, 32, 32), cpu)
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({"precision": "fp32", "compile": True, "images_per_s": {}, "agreement": {},
                                 "reason": "measured", "runtime": "torch"}))  # fmt: skip
    assert P.plan_auto("cpu", checkpoint, shape, n_images=20, cpu=cpu).reason.startswith("a job of 20 image(s)")
    assert P.plan_auto("cpu", checkpoint, shape, n_images=5000, cpu=cpu).cached  # a large job compiles it
    cache.write_text(json.dumps({"precision": "int8", "compile": False, "images_per_s": {}, "agreement": {},
                                 "reason": "measured", "runtime": "onnxruntime"}))  # fmt: skip
    small = P.plan_auto("cpu", checkpoint, shape, n_images=20, cpu=cpu)
    assert small.cached and small.name == "int8+onnxruntime"
    cache.unlink()
    if onnxrt.missing() is None:  # a small job of many pixels exports fp32 to ONNX Runtime; fewer stay on torch
        assert P.plan_auto("cpu", checkpoint, (8, 3, 224, 224), n_images=300, cpu=cpu).name == "fp32+onnxruntime"
        assert P.plan_auto("cpu", checkpoint, (8, 3, 224, 224), n_images=100, cpu=cpu).name == "fp32"
    cache.write_text("{not json")  # a damaged cache is ignored, not fatal
    assert P.plan_auto("cpu", checkpoint, shape, n_images=5000, cpu=cpu) is None
    assert P.plan_auto("cuda", checkpoint, shape, n_images=1, cpu=cpu).name == "bf16"


@pytest.mark.parametrize("runtime", [pytest.param("torch", marks=needs_torchao),
                                     pytest.param("onnxruntime", marks=needs_onnxruntime)])  # fmt: skip
def test_predict_int8_reports_its_path_and_writes_every_output(tiny_checkpoint, image_files, tmp_path, capsys, runtime):
    ckpt = tiny_checkpoint("tiny_mtl_test", img_size=32)
    summary = predict(ckpt, tmp_path / "images", tmp_path / "int8", num_workers=0, batch_size=4, precision="int8",
                      calibrate=[tmp_path / "images"], runtime=runtime)  # fmt: skip
    name = path_name("int8", runtime=runtime)
    assert summary.precision == name and f"path: {name}" in capsys.readouterr().err
    fp32 = predict(ckpt, tmp_path / "images", tmp_path / "fp32", num_workers=0, batch_size=4, precision="fp32")
    rows = {r["id"]: r for r in csv.DictReader(open(tmp_path / "int8" / "probabilities.csv"))}
    assert len(rows) == summary.n_images == fp32.n_images == len(image_files)
    for row in fp32.rows:  # int8 probabilities stay near fp32's
        assert abs(float(rows[row["id"]]["prob_class1"]) - float(row["prob_class1"])) < 0.05


def test_precision_needs_the_optimized_model(tiny_checkpoint, image_files, tmp_path):
    with pytest.raises(ValueError, match="needs the optimized model"):
        predict(
            tiny_checkpoint("tiny_mtl_test", img_size=32),
            tmp_path / "images",
            tmp_path / "o",
            optimize=False,
            precision="int8",
        )
    with pytest.raises(ValueError, match="unknown precision 'fp8'; expected one of auto, fp32, bf16, fp16, int8"):
        predict(tiny_checkpoint("tiny_mtl_test", img_size=32), tmp_path / "images", tmp_path / "o", precision="fp8")


def test_auto_on_a_small_job_says_fp32_and_unreadable_inputs_still_get_reported(
    tiny_checkpoint, image_files, corrupt_image, tmp_path, capsys, monkeypatch
):
    ckpt = tiny_checkpoint("tiny_mtl_test", img_size=32)
    summary = predict(ckpt, tmp_path / "images", tmp_path / "auto", num_workers=0)
    assert summary.precision == "fp32" and "auto: precision fp32: a job of" in capsys.readouterr().err
    hint = "ONNX Runtime paths need onnxruntime: pip install 'fastmtl[export]'"
    monkeypatch.setattr(onnxrt, "missing", lambda: hint)
    predict(ckpt, tmp_path / "images", tmp_path / "auto-without-ort", num_workers=0)
    assert f"auto: {hint} (its fp32 and int8 are the fastest CPU paths" in capsys.readouterr().err
    only_broken = predict(ckpt, [corrupt_image], tmp_path / "broken", num_workers=0, precision="int8")
    assert (only_broken.n_images, only_broken.n_failed, only_broken.precision) == (0, 1, "fp32")
    assert "no readable image to calibrate" in capsys.readouterr().err


def test_the_command_line_offers_exactly_the_library_precisions():
    from fastmtl.cli import build_parser

    predict_parser = build_parser()._subparsers._group_actions[0].choices["predict"]
    (action,) = [a for a in predict_parser._actions if a.dest == "precision"]
    assert tuple(action.choices) == PRECISIONS and action.default == "auto"
    assert f"{P.AUTO_MIN_IMAGES}+" in action.help
    (runtime,) = [a for a in predict_parser._actions if a.dest == "runtime"]
    assert tuple(runtime.choices) == RUNTIMES and runtime.default == "auto"
