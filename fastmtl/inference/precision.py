"""Numeric paths for inference, and a measured choice between them (``fastmtl predict --precision``).

========  =========================================================================================================
``fp32``  :func:`~inference.optimize.optimize_for_inference` in fp32 (BN folded, channels_last), optionally compiled
``bf16``  the same under bf16 autocast: CUDA, or a CPU that computes bf16 natively (avx512_bf16 / AMX, as oneDNN
          reports it; emulated bf16 is slower than fp32, so fastmtl refuses it rather than guess)
``fp16``  CUDA only
``int8``  CPU: PT2E static quantization with torchao's x86 Inductor quantizer, calibrated on the user's images;
          convolutions and linears in int8, softmax, norms and the attention arithmetic in fp32; always compiled
``auto``  CUDA: bf16. CPU: the fastest of the paths above whose outputs agree with fp32 on a calibration sample
          within :data:`.agreement.TOLERANCE`, measured once and cached per checkpoint, image size, batch and CPU
========  =========================================================================================================

On a CPU, fp32 and int8 also run on ONNX Runtime (``runtime="onnxruntime"``, :mod:`inference.onnxrt`), and fp32, bf16
(where native) and int8 (NNCF) on OpenVINO (``runtime="openvino"``, :mod:`inference.openvino_rt`): exported once (one
ONNX file serves both), quantized once and cached on disk, so later processes load them in seconds. Inductor's
compiled CPU paths (freezing: weights folded in as constants, oneDNN-prepacked) are paid by every process: 53 s at
224 px batch 8 on 2 cores, and 54 s again with Inductor's disk caches warm. So ``auto`` only measures for jobs of at
least :data:`AUTO_MIN_IMAGES` images and caches its decision; a smaller job reuses an ONNX Runtime or OpenVINO
decision, or runs fp32 (on ONNX Runtime where the export pays back or was done before; :func:`plan_auto`). With OpenVINO
installed ``auto`` measures no compiled torch path: its bf16 and int8 were faster than torch's compiled ones (README,
Performance), so no job pays Inductor's compile.

What the choices depend on (bf16, VNNI, AMX) comes from :func:`fastmtl.runtime.cpu_info`, which ``$FASTMTL_CPU``
can set to a simulated CPU kind (the tests run every kind that way).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastmtl.data.cache import default_cache_dir
from fastmtl.files import atomic_write_json
from fastmtl.inference import onnxrt, openvino_rt
from fastmtl.inference.agreement import agreement, cat_outputs, describe, within_tolerance
from fastmtl.inference.optimize import optimize_for_inference
from fastmtl.inference.torch_paths import FixedBatch, inductor_cpu, quantize_int8
from fastmtl.output import MTLOutput
from fastmtl.runtime import CpuInfo, cpu_info

__all__ = [
    "AUTO_MIN_IMAGES",
    "CALIBRATION_IMAGES",
    "ORT_EXPORT_PIXELS",
    "PRECISIONS",
    "RUNTIMES",
    "CpuInfo",
    "PrecisionUnavailable",
    "build_path",
    "choose_precision",
    "cpu_info",
    "path_name",
    "plan_auto",
    "resolve_runtime",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
_FILE_RUNTIMES = ("onnxruntime", "openvino")  # cached on disk: a later process loads them without compiling
CALIBRATION_IMAGES = 32  # what int8 calibrates on and auto compares on, whatever the batch size
AUTO_MIN_IMAGES = 1000  # below this a first run does not earn back measuring and compiling (module docstring)
# ONNX Runtime's fp32 export (~25 s on 2 cores, whatever the image size) pays back after about this many 224 px
# images (0.62 s -> 0.47 s per image measured at batch 8); a job of fewer pixels than that exports nothing.
ORT_EXPORT_PIXELS = 200 * 224 * 224


class PrecisionUnavailable(ValueError):
    """The precision cannot run here (no native bf16, no torchao, fp16 on a CPU, ...); the message says why."""


# ------------------------------------------------------------------------------------------------ the paths


def resolve_runtime(runtime: str, precision: str, device: torch.device | str) -> str:
    """``runtime="auto"``: for int8 on a CPU, OpenVINO where it is installed, else ONNX Runtime where it is (both
    faster than torchao's int8 where measured, and cached on disk); torch otherwise."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    if runtime != "auto":
        return runtime
    if precision != "int8" or torch.device(device).type != "cpu":
        return "torch"
    return next((name for name, rt in (("openvino", openvino_rt), ("onnxruntime", onnxrt)) if rt.missing() is None),
                "torch")  # fmt: skip


def path_name(precision: str, compile: bool = False, runtime: str = "torch") -> str:
    """The name the bench, ``auto``'s log and ``fastmtl predict`` give a path: ``fp32``, ``fp32+compile``,
    ``int8`` (torchao, always compiled), ``int8+onnxruntime``, ``int8+openvino``, ..."""
    if runtime in _FILE_RUNTIMES:
        return f"{precision}+{runtime}"
    return precision + ("+compile" if compile and precision != "int8" else "")


def _check(precision: str, device: torch.device, cpu: CpuInfo, runtime: str = "torch") -> None:
    if precision not in PRECISIONS or precision == "auto":
        raise ValueError(f"precision {precision!r} is not a path; expected one of {', '.join(PRECISIONS[1:])}")
    if runtime == "onnxruntime":
        if device.type != "cpu" or precision not in ("fp32", "int8"):
            raise PrecisionUnavailable(f"ONNX Runtime runs fp32 and int8 on a CPU, not {precision} on {device}")
        reason = onnxrt.missing()
        if reason:
            raise PrecisionUnavailable(reason)
        return
    if runtime == "openvino":
        if device.type != "cpu" or precision not in ("fp32", "bf16", "int8"):
            raise PrecisionUnavailable(f"OpenVINO runs fp32, bf16 and int8 on a CPU, not {precision} on {device}")
        if openvino_rt.missing():
            raise PrecisionUnavailable(openvino_rt.missing())
    if precision == "fp16" and device.type != "cuda":
        raise PrecisionUnavailable("fp16 runs on CUDA only; on a CPU use fp32, bf16 (where native) or int8")
    if precision == "int8" and device.type != "cpu":
        raise PrecisionUnavailable("int8 is a CPU path; on CUDA use bf16 or fp16")
    if precision == "bf16" and device.type == "cpu" and not cpu.bf16:  # on torch and OpenVINO alike
        raise PrecisionUnavailable(f"this CPU ({cpu.name}, {cpu.isa}) has no native bf16 (avx512_bf16 or AMX): "
                                   "emulated bf16 is slower than fp32; use fp32 or int8")  # fmt: skip
    if precision == "int8" and runtime == "torch" and importlib.util.find_spec("torchao") is None:
        raise PrecisionUnavailable("int8 on torch needs torchao: pip install 'fastmtl[int8]' (or 'fastmtl[export]' "
                                   "for ONNX Runtime's int8)")  # fmt: skip


def build_path(
    model: nn.Module,
    precision: str,
    example: torch.Tensor,
    *,
    compile: bool = False,
    runtime: str = "torch",
    calibration: list[torch.Tensor] | None = None,
    refresh: bool = False,
    log: Callable[[str], None] = print,
) -> nn.Module:
    """The model ready to run in ``precision`` on the device it sits on, for batches shaped like ``example``.

    Args:
        model: a fastmtl model (left unchanged).
        precision: ``fp32``, ``bf16``, ``fp16`` or ``int8`` (see the module table).
        example: one input batch (B, C, H, W); compiled paths are built and warmed up at this shape.
        compile: ``torch.compile`` the fp32/bf16/fp16 paths (torch's int8 is always compiled); on a CPU with
            freezing. Not for ONNX Runtime, which optimizes its own graph.
        runtime: ``torch``, ``onnxruntime`` (CPU fp32 / int8, :mod:`fastmtl.inference.onnxrt`), ``openvino`` (CPU fp32 /
            bf16 / int8, :mod:`fastmtl.inference.openvino_rt`) or ``auto`` (:func:`resolve_runtime`).
        calibration: int8's calibration batches (default: ``[example]``).
        refresh: ONNX Runtime / OpenVINO int8: calibrate again even when a calibrated file is cached.
        log: where ONNX Runtime's and OpenVINO's export and calibration lines go.

    Raises:
        PrecisionUnavailable: the precision cannot run on this device or CPU, or not on this runtime.
    """
    device = next(model.parameters()).device
    runtime = resolve_runtime(runtime, precision, device)
    if runtime in _FILE_RUNTIMES and compile:
        raise ValueError(f"compile applies to the torch runtime; {runtime} optimizes its own graph")
    cpu = cpu_info()
    _check(precision, device, cpu, runtime)
    if runtime == "onnxruntime":
        return onnxrt.build(model, precision, example, calibration=calibration, refresh=refresh,
                            int8_vnni=cpu.int8_vnni, log=log)  # fmt: skip
    if runtime == "openvino":
        net = openvino_rt.build(model, precision, example, cpu, calibration=calibration, refresh=refresh, log=log)
        return FixedBatch(net, example.shape[0], lambda out: out)
    cpu = device.type == "cpu"
    if precision == "int8":
        batches = [b.to(device) for b in (calibration or [example])]
        full = [b for b in batches if b.shape[0] == example.shape[0]]  # exported at one shape; padding would skew
        batches = full or [F.pad(batches[0], (0, 0, 0, 0, 0, 0, 0, example.shape[0] - batches[0].shape[0]))]
        quantized = quantize_int8(model, batches)
        net = FixedBatch(torch.compile(quantized), example.shape[0], lambda out: MTLOutput(*out))
    else:
        amp = "off" if precision == "fp32" else precision
        net = optimize_for_inference(model, amp=amp, compile="default" if compile else False)
        if compile:
            net = FixedBatch(net, example.shape[0], lambda out: out)
    if precision == "int8" or compile:
        with inductor_cpu() if cpu else contextlib.nullcontext(), torch.inference_mode():
            net(example.to(device))  # compile now, inside the freezing patch, not at the first real batch
    return net


# --------------------------------------------------------------------------------------------- the choice


@dataclass
class Decision:
    """What ``auto`` chose and why: the path, its speed against eager fp32 and its agreement with fp32."""

    precision: str
    compile: bool
    images_per_s: dict[str, float]
    agreement: dict[str, dict[str, float]]
    reason: str
    cached: bool = False
    runtime: str = "torch"

    @property
    def name(self) -> str:
        return path_name(self.precision, self.compile, self.runtime)

    def describe(self) -> str:
        return f"precision {self.name}: {self.reason}" + (" (cached decision)" if self.cached else "")


def decision_file(checkpoint: str | os.PathLike, shape: Sequence[int], cpu: CpuInfo) -> Path:
    """Where ``auto`` caches its decision: keyed by checkpoint (path, size, mtime), input shape (B, C, H, W), CPU,
    torch and whether ONNX Runtime and OpenVINO are installed."""
    st = Path(checkpoint).stat()
    raw = json.dumps([str(Path(checkpoint).resolve()), st.st_size, st.st_mtime_ns, list(shape), cpu.key,
                      torch.__version__, onnxrt.missing() is None, openvino_rt.missing() is None])  # fmt: skip
    return default_cache_dir() / "precision" / (hashlib.sha256(raw.encode()).hexdigest()[:24] + ".json")


def _speed(net: nn.Module, example: torch.Tensor, rounds: int = 3) -> float:
    with torch.inference_mode():
        net(example)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            net(example)
            times.append(time.perf_counter() - start)
    return example.shape[0] / sorted(times)[len(times) // 2]


def _candidates(device: torch.device, cpu: CpuInfo) -> list[tuple[str, bool, str]]:
    """(precision, compile, runtime) of each CPU path ``auto`` measures, from ``cpu``'s facts and the runtimes
    installed. With OpenVINO: its fp32, bf16 (where native) and int8, beside ONNX Runtime's, and no compiled torch
    path (OpenVINO's bf16 and int8 were faster than torch's compiled ones, and a compiled path costs every process
    its compile). Else with ONNX Runtime, torch's compiled fp32 and (without VNNI) torchao's int8 are left out:
    ONNX Runtime's paths gave the same outputs faster on the CPUs where both were measured."""
    ort, ov = onnxrt.missing() is None, openvino_rt.missing() is None
    found = [("fp32", False, "torch")]
    found += [("fp32", False, "onnxruntime"), ("int8", False, "onnxruntime")] if ort else []
    found += [] if ort or ov else [("fp32", True, "torch")]
    for precision in ("fp32", "bf16", "int8") if ov else ():
        with contextlib.suppress(PrecisionUnavailable):
            _check(precision, device, cpu, "openvino")
            found.append((precision, False, "openvino"))
    for precision in () if ov else ("bf16", "int8"):
        with contextlib.suppress(PrecisionUnavailable):
            _check(precision, device, cpu)
            if precision == "bf16" or not ort or cpu.int8_vnni:
                found.append((precision, True, "torch"))
    return found


def plan_auto(
    device: torch.device | str,
    checkpoint: str | os.PathLike,
    shape: Sequence[int],
    n_images: int,
    min_images: int = AUTO_MIN_IMAGES,
    model: nn.Module | None = None,
) -> Decision | None:
    """What ``auto`` runs without measuring, or None when it measures.

    bf16 on CUDA; a decision cached for this checkpoint, batch shape ``shape`` and CPU (for a job of fewer than
    ``min_images`` images only when it compiles nothing: an ONNX Runtime or OpenVINO path, whose files are cached
    too). Any
    other job of fewer than ``min_images`` images runs fp32: on ONNX Runtime when it is installed and either the
    job has :data:`ORT_EXPORT_PIXELS` pixels or more or ``model``'s file is already cached, else on torch.
    """
    if torch.device(device).type == "cuda":
        return Decision("bf16", False, {}, {}, "CUDA: bf16 autocast")
    cache = decision_file(checkpoint, shape, cpu_info())
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        cached = Decision(**{**json.loads(cache.read_text()), "cached": True})
        if n_images >= min_images or cached.runtime in _FILE_RUNTIMES:
            return cached
    if n_images >= min_images:
        return None
    reason = (f"a job of {n_images} image(s) is below {min_images}, where measuring and compiling the faster paths "
              "(minutes) would not pay back")  # fmt: skip
    if onnxrt.missing() is None:
        if n_images * shape[-2] * shape[-1] >= ORT_EXPORT_PIXELS:
            why = "enough images to pay back its export, cached for later jobs"
        elif model is not None and onnxrt.cached_file(model, shape, "fp32").is_file():
            why = "exported by an earlier job"
        else:
            return Decision("fp32", False, {}, {}, reason)
        return Decision("fp32", False, {}, {}, f"{reason}; fp32 on ONNX Runtime ({why}; the same outputs as "
                        "torch within 1e-4, faster on the CPUs measured)", runtime="onnxruntime")  # fmt: skip
    return Decision("fp32", False, {}, {}, reason)


def choose_precision(
    model: nn.Module,
    checkpoint: str | os.PathLike,
    sample: list[torch.Tensor],
    *,
    n_images: int,
    min_images: int = AUTO_MIN_IMAGES,
    refresh: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, Decision]:
    """``--precision auto``: the fastest path within tolerance of fp32 (:mod:`inference.agreement`), built and ready.

    What :func:`plan_auto` decides without measuring is built as it says. Otherwise every path this CPU can run
    is built, timed on ``sample[0]`` and compared with fp32 on the whole sample (:func:`agreement` of all its
    images at once), and the decision is cached (:func:`decision_file`).

    Args:
        model: the loaded model, on its device.
        checkpoint: its file (part of the cache key).
        sample: calibration batches of the job's batch size, from the user's own images.
        n_images: the job's size.
        min_images: smallest job that measures and compiles.
        refresh: calibrate the int8 files anew on ``sample`` when measuring (False: reuse cached ones, as the bench
            does with files built from the same images earlier in its run).
        log: where progress lines go.
    """
    device, cpu, example = next(model.parameters()).device, cpu_info(), sample[0]
    plan = plan_auto(device, checkpoint, example.shape, n_images, min_images, model)
    if plan is not None:
        if plan.cached:
            log(f"auto: {plan.describe()}; building it")
        net = build_path(model, plan.precision, example, compile=plan.compile, runtime=plan.runtime,
                         calibration=sample, log=log)  # fmt: skip
        return net, plan
    candidates = _candidates(device, cpu)
    log(f"auto: a job of {n_images} images: timing {', '.join(path_name(*c) for c in candidates)} against eager "
        f"fp32 and comparing their outputs on {sum(b.shape[0] for b in sample)} of its images; this takes minutes "
        "once (exports, calibration, compiles), then jobs with this checkpoint, input shape and CPU reuse the "
        "decision")  # fmt: skip
    with torch.inference_mode():
        reference = cat_outputs([model.eval()(batch) for batch in sample])
    speeds, agreements, best = {"eager": _speed(model.eval(), example)}, {}, None
    for precision, compiled, runtime in candidates:
        name = path_name(precision, compiled, runtime)
        log(f"auto: measuring {name} on {len(sample)} batch(es) of {example.shape[0]}")
        start = time.perf_counter()
        try:
            net = build_path(model, precision, example, compile=compiled, runtime=runtime, calibration=sample,
                             refresh=refresh, log=log)  # fmt: skip
        except Exception as e:  # a path that fails to build here is not taken, and the reason is shown
            log(f"auto: {name} could not be built ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            continue
        speeds[name] = _speed(net, example)
        with torch.inference_mode():  # over the whole sample, as the bench measures it on 200 images
            agreements[name] = agreement(reference, cat_outputs([net(batch) for batch in sample]))
        log(f"auto: {name} {speeds[name]:.2f} images/s ({speeds[name] / speeds['eager']:.2f}x eager fp32), built "
            f"in {time.perf_counter() - start:.0f} s, against fp32 {describe(agreements[name])}")  # fmt: skip
        if within_tolerance(agreements[name]) and (best is None or speeds[name] > speeds[best[0]]):
            best = (name, precision, compiled, runtime, net)
    if best is None:
        return build_path(model, "fp32", example), Decision("fp32", False, speeds, agreements, "no path measured")
    name, precision, compiled, runtime, net = best
    reason = (f"{speeds[name]:.2f} images/s, {speeds[name] / speeds['eager']:.2f}x eager fp32, within tolerance of "
              f"fp32 ({describe(agreements[name])})")  # fmt: skip
    decision = Decision(precision, compiled, speeds, agreements, reason, runtime=runtime)
    cache = decision_file(checkpoint, example.shape, cpu)
    atomic_write_json(cache, {k: v for k, v in asdict(decision).items() if k != "cached"})
    return net, decision
