"""OpenVINO paths for CPU inference: fp32, bf16 (where the CPU computes it natively) and int8 quantized by NNCF.

OpenVINO reads the fp32 ONNX file that :mod:`inference.onnxrt` exports and caches (one export serves both runtimes)
and compiles it for the CPU at the job's batch shape in seconds. fp32 and bf16 are that file compiled with
OpenVINO's inference precision set to f32 or bf16; bf16 only on a CPU with native bf16 (avx512_bf16 / AMX), as
torch's bf16 (:mod:`fastmtl.inference.path`).

int8 is NNCF's post-training quantization of that model (the transformer preset: convolutions and matmuls in int8,
softmax, LayerNorm and GELU left to OpenVINO in the inference precision), calibrated on the job's images, with two
changes to NNCF's defaults, both measured on resformer_mtl at 224 px batch 8 (a one-epoch ISIC checkpoint, 32
calibration images; the mean change of class probabilities against fp32 on 48 and on 32 other ISIC images):
SmoothQuant off (on the 48: 0.0093 with it, 0.0023 without, which was also faster), and activation ranges from the
calibration images' overall min and max, as ONNX Runtime's int8 takes them, rather than the mean of each image's (on
the 32: 0.0105 with the mean, one image's probability moving by 0.29; 0.0050 with the overall range, its largest
move 0.10; 0.0032 on the 48). The file is saved as OpenVINO IR (``.xml`` + ``.bin``) under
``$FASTMTL_CACHE/openvino``. The file is named by the model config, the image size, the recipe, the CPU kind and
:func:`inference.onnxrt.weights_digest`, and a ``.json`` beside it holds the SHA-256 of both files: a file that does
not match (damaged, or written half by a crashed job) is built again. The recipe follows the CPU
(:func:`fastmtl.runtime.cpu_info`, which ``$FASTMTL_CPU`` can simulate): without VNNI the weights use 7 bits
everywhere (NNCF's overflow fix: AVX2's ``vpmaddubsw`` saturates with 8, see :mod:`inference.onnxrt`), with VNNI 8;
the operators that stay float run in bf16 where the CPU has it, else fp32.

The calibration of a cached int8 file is that of the job that built it; ``refresh=True`` (``fastmtl predict
--calibrate``) builds it again from the given images. The folder is bounded as the ONNX one is
(``$FASTMTL_ONNX_CACHE_GB``, least recently used first).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from fastmtl.data.cache import default_cache_dir
from fastmtl.files import atomic_write_json, file_sha256
from fastmtl.inference import onnxrt
from fastmtl.output import MTLOutput
from fastmtl.runtime import CpuInfo

__all__ = ["RECIPE", "OpenVinoModel", "build", "cached_int8", "core", "missing"]

_NEEDS = ("openvino", "nncf", "onnx", "onnxscript", "onnxruntime")  # the ONNX export is onnxrt's
RECIPE = "int8ov3"  # the int8 files' name; a new name when the recipe changes, so older cached files are not reused


def missing() -> str | None:
    """None when OpenVINO paths can run here, else what to install."""
    absent = [m for m in _NEEDS if importlib.util.find_spec(m) is None]
    return f"OpenVINO paths need {', '.join(absent)}: pip install 'fastmtl[openvino]'" if absent else None


@functools.cache
def core():
    """The process's one ``openvino.Core``, never released: every OpenVINO use of fastmtl goes through it.

    Each Core's CPU plugin, when created, replaces the main thread's signal stack (``sigaltstack``) with a larger
    one of its own (OpenVINO's workaround for AMX under Python) and, when destroyed, puts back the one it found. Cores
    that end in another order than they began leave a freed stack installed, and the next Python signal handler
    that runs (SIGCHLD when a DataLoader worker exits, SIGINT on Ctrl-C) dies of SIGSEGV on it: seen as a crash of
    ``fastmtl predict`` with workers, or of a test session, after ``auto`` had measured OpenVINO's paths. With one
    Core that lives as long as the process, the stack it installs stays valid, and the Cores NNCF makes while
    calibrating begin and end inside its life, in order."""
    import openvino as ov

    return ov.Core()


def _slug(cpu: CpuInfo) -> str:
    return "amx" if cpu.amx else f"{cpu.isa.lower()}{'-vnni' if cpu.int8_vnni else ''}{'-bf16' if cpu.bf16 else ''}"


def cached_int8(model: nn.Module, shape: Sequence[int], cpu: CpuInfo, *, digest: str | None = None) -> Path:
    """Where the int8 IR of ``model`` for inputs of ``shape`` (any batch) quantized for ``cpu`` is cached."""
    fp32 = onnxrt.cached_file(model, shape, "fp32", digest=digest)
    stem = fp32.stem.replace("-fp32-", f"-{RECIPE}-{_slug(cpu)}-")
    return default_cache_dir() / "openvino" / f"{stem}.xml"


class OpenVinoModel(nn.Module):
    """An ONNX or IR file compiled by OpenVINO for the CPU at one batch shape, called like a fastmtl model:
    ``(batch, C, H, W) -> MTLOutput`` (:class:`fastmtl.inference.torch_paths.FixedBatch` pads a short batch).

    Args:
        path: the ``.onnx`` or ``.xml`` file; its outputs are named ``seg_logits`` and / or ``cls_logits``.
        shape: the batch shape it is compiled for.
        precision: OpenVINO's inference precision (``f32``, ``bf16``) or None for its default on this CPU.
        threads: inference threads (default ``torch.get_num_threads()``, fitted to the idle cores by fastmtl).
    """

    def __init__(self, path: str | Path, shape: Sequence[int], precision: str | None, threads: int | None = None):
        super().__init__()
        graph = core().read_model(str(path))
        graph.reshape({graph.inputs[0].any_name: list(shape)})
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
        if precision == "bf16" and "BF16" not in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            precision = "f32"  # a simulated bf16 CPU ($FASTMTL_CPU) on hardware without it: what the CPU can do
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        self.path, self.shape = Path(path), tuple(shape)
        self.compiled = core().compile_model(graph, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.names = [output.any_name for output in self.compiled.outputs]

    def forward(self, x: torch.Tensor) -> MTLOutput:
        results = self.request.infer([np.ascontiguousarray(x.detach().cpu().float().numpy())])
        found = {name: torch.from_numpy(np.array(results[i])) for i, name in enumerate(self.names)}
        return MTLOutput(found.get("seg_logits"), found.get("cls_logits"))


def _digests(xml: Path) -> dict[str, str]:
    return {p.suffix: file_sha256(p) for p in (xml, xml.with_suffix(".bin"))}  # streamed, not read whole


def _verified(xml: Path) -> bool:
    """The IR pair is whole: both files there and matching the SHA-256 its ``.json`` recorded when written."""
    try:
        return json.loads(xml.with_suffix(".json").read_text())["sha256"] == _digests(xml)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def quantize(fp32: Path, out: Path, calibration: list[torch.Tensor], cpu: CpuInfo) -> None:
    """Writes the IR ``out`` (+ ``.bin``, + ``.json`` of both files' SHA-256): the fp32 ONNX file ``fp32``
    quantized to int8 by NNCF, calibrated on ``calibration`` (batches of one shape), with ``cpu``'s recipe."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    graph = core().read_model(str(fp32))
    graph.reshape({graph.inputs[0].any_name: list(calibration[0].shape)})
    data = nncf.Dataset([b.detach().cpu().float().contiguous().numpy() for b in calibration])
    advanced = AdvancedQuantizationParameters(
        overflow_fix=OverflowFix.DISABLE if cpu.int8_vnni else OverflowFix.ENABLE,  # 7-bit weights without VNNI
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1),  # off, and activations' ranges: docstring
        activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
    )
    quantized = nncf.quantize(graph, data, preset=nncf.QuantizationPreset.MIXED, model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(calibration), target_device=nncf.TargetDevice.CPU,
                              advanced_parameters=advanced)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").unlink(missing_ok=True)  # the pair is unverified until both files are in place
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.") as work:  # a crash leaves no half file
        ov.save_model(quantized, str(Path(work) / "model.xml"), compress_to_fp16=False)
        for suffix in (".bin", ".xml"):
            os.replace(Path(work) / f"model{suffix}", out.with_suffix(suffix))
    atomic_write_json(out.with_suffix(".json"), {"sha256": _digests(out), "cpu": cpu.key, "recipe": RECIPE})


def build(
    model: nn.Module,
    precision: str,
    example: torch.Tensor,
    cpu: CpuInfo,
    *,
    calibration: list[torch.Tensor] | None = None,
    refresh: bool = False,
    log: Callable[[str], None] = print,
) -> OpenVinoModel:
    """``model`` compiled by OpenVINO in ``precision`` (``fp32``, ``bf16`` or ``int8``) for batches shaped like
    ``example``, from the cached files or exported / quantized now (module docstring); the path was checked by
    :func:`fastmtl.inference.resolve.resolve` (:func:`fastmtl.inference.path.unavailable`).

    Args:
        model: a fastmtl model on the CPU.
        precision: ``fp32``, ``bf16`` or ``int8``.
        example: a batch at the job's batch size and image size.
        cpu: the CPU's facts (:func:`fastmtl.runtime.cpu_info`): int8's recipe and its cache name follow them.
        calibration: int8's calibration batches (default ``[example]``; batches of another size are left out).
        refresh: rebuild the int8 file from ``calibration`` even when one is cached.
        log: where lines about exporting and quantizing go.
    """
    digest = onnxrt.weights_digest(model, example.shape)
    fp32 = onnxrt.exported_fp32(model, example, digest=digest, log=log)
    float_precision = "bf16" if cpu.bf16 else "f32"
    if precision != "int8":
        return OpenVinoModel(fp32, example.shape, "f32" if precision == "fp32" else "bf16")
    xml = cached_int8(model, example.shape, cpu, digest=digest)
    if not refresh and _verified(xml):
        with contextlib.suppress(OSError):  # marked as used for the cache bound; a read-only folder is fine
            for path in (xml, xml.with_suffix(".bin"), xml.with_suffix(".json")):
                os.utime(path)
        return OpenVinoModel(xml, example.shape, float_precision)
    if xml.is_file() and not refresh:
        log(f"openvino: the cached {xml} does not match its checksum (damaged or incomplete); building it again")
    batches = [b for b in (calibration or [example]) if b.shape == example.shape] or [example]
    start = time.perf_counter()
    quantize(fp32, xml, batches, cpu)
    log(f"openvino: int8 (NNCF) calibrated on {sum(b.shape[0] for b in batches)} image(s) in "
        f"{time.perf_counter() - start:.0f} s (the recipe of a {cpu.kind} CPU), cached as {xml}")  # fmt: skip
    onnxrt._bound_cache(xml.parent, keep={xml.with_suffix(".bin")}, log=log, pattern="*.bin", runtime="openvino")
    for orphan in [*xml.parent.glob("*.xml"), *xml.parent.glob("*.json")]:  # the small files of a removed weights file
        if not orphan.with_suffix(".bin").exists():
            orphan.unlink(missing_ok=True)
    return OpenVinoModel(xml, example.shape, float_precision)
