"""CPU inference paths side by side: images/s, the ratio to eager fp32, and agreement with fp32 on real images.

Group ``cpu-precision-<img>px-b<batch>``: 224 px batch 8 by default (about 9 minutes on 2 cores); ``--bench-full``
(``FASTMTL_BENCH_FULL=1``) adds batch 1, torch's own paths (``fp32``, ``fp32+compile``, ``bf16``, ``bf16+compile``,
``int8`` on torchao, each compiled in every process) and fastmtl's ``fp32+openvino`` and ``bf16+openvino`` (the
peer's fp32 and default compiled through fastmtl); ``--bench-quick``: 64 px batch 2, uncompiled paths only.
Providers, all of
``resformer_mtl`` (the weights of ``--bench-checkpoint`` when given, else seeded random ones, which the results say):

- ``eager-fp32``: the model as built (the baseline);
- fastmtl's paths, resolved (:func:`fastmtl.inference.resolve.resolve`) and built
  (:func:`fastmtl.inference.build.build`) as ``fastmtl predict`` does: ``fp32+onnxruntime``, ``int8+onnxruntime`` (the
  ``export`` extra), ``int8+openvino`` (the ``openvino`` extra) and, with ``--bench-full``, ``fp32+openvino``,
  ``bf16+openvino`` and torch's (bf16 only where the CPU computes it natively; skipped with the reason otherwise);
- the peer, OpenVINO as a user runs it in a few lines on the same exported ONNX file (:func:`_openvino_peer`):
  ``openvino-fp32``, ``openvino-default`` (its own default precision: bf16 on a CPU that has it) and
  ``openvino-int8`` (NNCF post-training quantization, transformer preset, on the calibration images);
- ``auto``: what ``fastmtl predict`` runs by default on a job large enough to measure (``resolve`` of
  ``Request("auto")``, which measures with :func:`fastmtl.inference.precision.measure`, its cached decision removed
  first).

int8 and ``auto`` calibrate on :data:`~inference.path.CALIBRATION_IMAGES` ISIC 2017 images from the end of the
sorted list (random inputs without the data), as ``fastmtl predict`` calibrates on the user's own images; ``auto``
compares its paths with fp32 on the :data:`~inference.path.CHECK_IMAGES` before them. Builds are
shared within the run: the ONNX file is exported once into the session's private cache folder, and ``auto`` reuses
the int8 files the cases before it calibrated on the same images (it times and compares them all the same). Each
batch-8 case also runs the first ``FASTMTL_BENCH_ACCURACY_IMAGES`` (default 48, 200 with ``--bench-full``) images
and records its agreement with eager fp32 there (mask DSC and pixel agreement in %, mean/max class-probability
difference) and, from the ground-truth masks, the change in mean DSC. ``extra_info`` carries ``speedup_vs_eager``
(against ``eager-fp32`` of the same group, measured earlier in the same session) and ``cpu_kind`` (AVX2, AVX-512 +
VNNI + bf16, AMX, ...: :func:`fastmtl.runtime.cpu_info`).

Run: ``pytest bench/test_cpu_precision.py --benchmark-json=out.json`` then ``python -m bench.report out.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastmtl
from fastmtl.inference.agreement import agreement, cat_outputs
from fastmtl.inference.build import build
from fastmtl.inference.path import CALIBRATION_IMAGES, CHECK_IMAGES, PrecisionUnavailable, Request, Sample
from fastmtl.inference.precision import decision_file
from fastmtl.inference.resolve import resolve
from fastmtl.options import FILE_RUNTIMES
from fastmtl.output import MTLOutput
from fastmtl.runtime import cpu_info

ISIC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isic2017"
PROVIDERS = ("eager-fp32", "fp32+onnxruntime", "int8+onnxruntime", "openvino-fp32", "openvino-default",
             "openvino-int8", "int8+openvino", "auto")  # fmt: skip
# --bench-full adds torch's paths (compiled in every process) and fastmtl's OpenVINO fp32 and bf16, which compile the
# same file with the same precision hint as the peer's fp32 and default (bf16 where the CPU has it)
FULL_PROVIDERS = ("fp32", "fp32+compile", "bf16", "bf16+compile", "int8", "fp32+openvino", "bf16+openvino")
QUICK_PROVIDERS = ("eager-fp32", "fp32", "fp32+onnxruntime", "openvino-fp32")
_EAGER: dict[str, float] = {}  # group -> eager images/s


def _shapes(quick: bool, full: bool = False) -> list[tuple[int, int]]:
    return [(64, 2)] if quick else [(224, 1), (224, 8)] if full else [(224, 8)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cpu_case" not in metafunc.fixturenames:
        return
    quick, full = bool(metafunc.config.getoption("bench_quick")), bool(metafunc.config.getoption("bench_full"))
    providers = QUICK_PROVIDERS if quick else PROVIDERS[:1] + FULL_PROVIDERS * full + PROVIDERS[1:]
    # Every eager baseline first: at 224 px, batch 8, eager fp32 ran 1.15-1.35x slower in a process that held an
    # ONNX Runtime session (1.05x after it was deleted), which would inflate every ratio.
    cases = [(img, batch, p) for p in providers[:1] for img, batch in _shapes(quick, full)]
    cases += [(img, batch, p) for img, batch in _shapes(quick, full) for p in providers[1:]]
    params = [pytest.param(case, id="{}px-b{}-{}".format(*case)) for case in cases]
    metafunc.parametrize("cpu_case", params)


@pytest.fixture(scope="module")
def weights(pytestconfig: pytest.Config, tmp_path_factory, bench_quick: bool) -> tuple[Path, str]:
    """(checkpoint file, what the weights are): --bench-checkpoint, or seeded random weights saved once."""
    given = pytestconfig.getoption("bench_checkpoint")
    if given:
        return Path(given), f"checkpoint {given}"
    from fastmtl.checkpoint.store import save_checkpoint

    torch.manual_seed(0)
    model = fastmtl.create_model("resformer_mtl", img_size=_shapes(bench_quick)[0][0])
    path = save_checkpoint(tmp_path_factory.mktemp("cpu-precision") / "random", model)
    return path, "random init (seed 0; pass --bench-checkpoint for trained weights)"


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """ONNX Runtime's exported files and auto's decisions go to a fresh folder: every session exports again."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTMTL_CACHE", str(tmp_path_factory.mktemp("fastmtl-cache")))
        yield


def _isic_files() -> list[Path]:
    images = ISIC / "ISIC-2017_Training_Data"
    return sorted(images.glob("ISIC_*.jpg")) if images.is_dir() else []


@pytest.fixture(scope="module")
def isic_images(bench_quick: bool, pytestconfig: pytest.Config) -> list[tuple[Path, Path]]:
    """(image, ground-truth mask) pairs of the shared ISIC 2017 training split, the first by id."""
    default = 200 if pytestconfig.getoption("bench_full") else 48
    n = 4 if bench_quick else int(os.environ.get("FASTMTL_BENCH_ACCURACY_IMAGES", default))
    masks = ISIC / "ISIC-2017_Training_Part1_GroundTruth"
    return [(p, masks / f"{p.stem}_segmentation.png") for p in _isic_files()[:n]]


def _calibration(example: torch.Tensor, images: int = CALIBRATION_IMAGES, before: int = 0) -> list[torch.Tensor]:
    """``images`` images in batches shaped like ``example``, from the end of the sorted ISIC images (disjoint from
    the accuracy images at the start; ``before`` more from the end), or random ones without the data. The defaults
    are the calibration images; ``auto``'s held-out images are the ones before them."""
    from fastmtl.data.images import ImagePaths

    batches = -(-images // example.shape[0])
    n = batches * example.shape[0]
    files = _isic_files()
    if len(files) < n + before:
        return [example, *(torch.randn_like(example) for _ in range(batches - 1))]
    data = ImagePaths(files[len(files) - n - before :][:n], tuple(example.shape[-2:]))
    return list(torch.stack([data[i]["image"] for i in range(n)]).split(example.shape[0]))


def _model(checkpoint: Path, img_size: int) -> torch.nn.Module:
    from fastmtl.checkpoint.store import load_model

    model, _ = load_model(checkpoint, device="cpu")
    if model.config.img_size != img_size:
        torch.manual_seed(0)
        fresh = fastmtl.create_model(model.config.name, img_size=img_size)
        own = fresh.state_dict()  # tables that depend on the input size (attention masks) keep the fresh ones
        fresh.load_state_dict({k: v for k, v in model.state_dict().items() if own[k].shape == v.shape}, strict=False)
        model = fresh
    return model.eval()


class _Peer(torch.nn.Module):
    """An OpenVINO compiled model called like a fastmtl model (for the accuracy comparison)."""

    def __init__(self, compiled) -> None:
        super().__init__()
        self.request, self.names = compiled.create_infer_request(), [o.any_name for o in compiled.outputs]

    def forward(self, x: torch.Tensor) -> MTLOutput:
        results = self.request.infer([x.numpy()])
        found = {name: torch.from_numpy(np.array(results[i])) for i, name in enumerate(self.names)}
        return MTLOutput(found.get("seg_logits"), found.get("cls_logits"))


def _openvino_peer(kind: str, model, example: torch.Tensor, calibration) -> torch.nn.Module:
    """OpenVINO as a user runs it: the exported ONNX file (fastmtl's, so every path reads the same graph) read and
    compiled for this batch shape with OpenVINO's defaults (``fp32``: f32 asked for; ``int8``: NNCF's
    ``quantize`` with the transformer preset on the calibration images)."""
    from fastmtl.inference import onnxrt, openvino_rt

    if openvino_rt.missing():
        pytest.skip(f"openvino-{kind}: {openvino_rt.missing()}")
    core = openvino_rt.core()  # the process's one Core, as everywhere (its docstring: a crash otherwise)
    graph = core.read_model(str(onnxrt.exported_fp32(model, example)))
    graph.reshape({graph.inputs[0].any_name: list(example.shape)})
    if kind == "int8":
        import nncf

        data = nncf.Dataset([b.numpy() for b in calibration if b.shape == example.shape])
        graph = nncf.quantize(graph, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
    return _Peer(core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"} if kind == "fp32" else {}))


def _build(provider: str, model, checkpoint: Path, example: torch.Tensor, calibration):
    """(module to time, auto's choice in words or None) for ``provider``: fastmtl's paths resolved and built as
    ``fastmtl predict`` does, on the calibration images (the int8 files the cases before calibrated are reused)."""
    if provider == "eager-fp32":
        return model, None
    if provider.startswith("openvino-"):
        return _openvino_peer(provider.removeprefix("openvino-"), model, example, calibration), None
    sample, cpu, said = Sample.of(calibration), cpu_info(), []
    if provider == "auto":  # compares on the images before the calibration ones, as predict on the job's next ones
        sample = Sample.of(calibration, held_out=_calibration(example, CHECK_IMAGES, before=len(calibration) *
                                                                  example.shape[0]))  # fmt: skip
        decision_file(checkpoint, example.shape, cpu).unlink(missing_ok=True)
        path = resolve(Request("auto"), device="cpu", cpu=cpu, n_images=10**6, sample=sample, model=model,
                       checkpoint=checkpoint, log=said.append)  # fmt: skip
        return build(path, model, sample), said[-1].removeprefix("auto: ")
    precision, _, suffix = provider.partition("+")
    request = Request(precision, suffix if suffix in FILE_RUNTIMES else "torch", compile=suffix == "compile")
    try:
        path = resolve(request, device="cpu", cpu=cpu, n_images=len(calibration), sample=sample, fallback=False)
    except PrecisionUnavailable as e:
        pytest.skip(f"{provider}: {e}")
    return build(path, model, sample), None


_REFERENCE: dict[tuple, tuple] = {}  # (checkpoint, img_size, batch) -> (images, eager fp32 outputs, truth)


def _reference(model, checkpoint: Path, images: list[tuple[Path, Path]], img_size: int, batch: int) -> tuple:
    """The decoded images, eager fp32's outputs on them and the ground-truth masks, computed once per shape."""
    key = (str(checkpoint), img_size, batch)
    if key not in _REFERENCE:
        from fastmtl.data.images import ImagePaths
        from fastmtl.data.io import read_mask

        n = len(images) // batch * batch
        data = ImagePaths([p for p, _ in images[:n]], (img_size, img_size))
        x = torch.stack([data[i]["image"] for i in range(n)])
        with torch.inference_mode():
            ref = cat_outputs([model(c) for c in x.split(batch)])
        masks = [torch.from_numpy((read_mask(m) > 0).astype(np.float32))[None, None] for _, m in images[:n]]
        truth = torch.cat([F.interpolate(m, size=(img_size, img_size), mode="nearest") for m in masks])[:, 0] > 0
        _REFERENCE[key] = (x, ref, truth)
    return _REFERENCE[key]


def _dsc(out: MTLOutput, truth: torch.Tensor) -> float:
    pred = torch.sigmoid(out.seg_logits[:, 0].float()) > 0.5
    inter, total = (pred & truth).sum((1, 2)).float(), (pred.sum((1, 2)) + truth.sum((1, 2))).float()
    return (200 * inter / total.clamp(min=1)).mean().item()


def _accuracy(net, x: torch.Tensor, ref: MTLOutput, truth: torch.Tensor, batch: int) -> dict[str, Any]:
    """Agreement with eager fp32 and the change in mean DSC against the ground truth."""
    with torch.inference_mode():
        got = cat_outputs([net(c) for c in x.split(batch)])
    found, fp32 = agreement(ref, got), _dsc(ref, truth)
    return {"accuracy_images": x.shape[0], **{f"vs_fp32_{k}": round(v, 5) for k, v in found.items()},
            "dsc_gt_fp32": round(fp32, 3), "dsc_gt_delta": round(_dsc(got, truth) - fp32, 3)}  # fmt: skip


def test_cpu_precision(cpu_case, measure, benchmark, bench_device, weights, isic_images) -> None:
    if bench_device.type != "cpu":
        pytest.skip("the CPU precision group runs on a CPU; on CUDA see bench/test_model.py")
    img_size, batch, provider = cpu_case
    group = f"cpu-precision-{img_size}px-b{batch}"
    checkpoint, what = weights
    model = _model(checkpoint, img_size)
    torch.manual_seed(1)
    example = torch.randn(batch, 3, img_size, img_size)
    net, choice = _build(provider, model, checkpoint, example, _calibration(example))
    cpu = cpu_info()
    facts: dict[str, Any] = {
        "weights": what,
        "img_size": img_size,
        "batch": batch,
        "cpu": cpu.key,
        "cpu_kind": cpu.kind,
    }
    if choice is not None:
        facts.update(auto_choice=choice)

    def forward():
        with torch.inference_mode():
            return net(example)

    measure(forward, group=group, provider=provider, items=batch, compiled="compile" in provider or provider in
            ("int8", "auto"), **facts)  # fmt: skip
    rate = benchmark.extra_info.get("images_per_s")
    if rate and provider == "eager-fp32":
        _EAGER[group] = rate
    if rate and group in _EAGER:
        benchmark.extra_info["speedup_vs_eager"] = round(rate / _EAGER[group], 3)
    if batch > 1 and isic_images:
        x, ref, truth = _reference(model, checkpoint, isic_images, img_size, batch)
        benchmark.extra_info.update(_accuracy(net, x, ref, truth, batch))
