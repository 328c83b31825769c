"""``--precision auto`` on a CPU: the fastest path whose outputs agree with fp32, measured once and cached.

``auto`` is bf16 on CUDA. On a CPU it is the fastest of the paths this CPU runs (:mod:`inference.path`) whose
outputs agree with fp32 within :data:`.agreement.TOLERANCE` on a sample of the job (images int8 did not calibrate
on), measured once and cached per checkpoint, image size, batch and CPU (:func:`decision_file`).

ONNX Runtime's and OpenVINO's paths are exported once (one ONNX file serves both), quantized once and cached on
disk, so later processes load them in seconds. Inductor's compiled CPU paths (freezing: weights folded in as
constants, oneDNN-prepacked) are paid by every process: 53 s at 224 px batch 8 on 2 cores, and 54 s again with
Inductor's disk caches warm. So ``auto`` only measures for jobs of at least :data:`AUTO_MIN_IMAGES` images and caches
its decision; a smaller job reuses an ONNX Runtime or OpenVINO decision, or runs fp32 (on ONNX Runtime where the
export pays back or was done before; :func:`plan_auto`). With OpenVINO installed ``auto`` measures no compiled torch
path: its bf16 and int8 were faster than torch's compiled ones (docs/INFERENCE.md), so no job pays Inductor's
compile. :func:`fastmtl.inference.resolve.resolve` asks :func:`plan_auto` once and, where it says to, :func:`measure`
once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from fastmtl.data.cache import default_cache_dir
from fastmtl.files import atomic_write_json
from fastmtl.inference import onnxrt, openvino_rt
from fastmtl.inference.agreement import agreement, cat_outputs, describe, within_tolerance
from fastmtl.inference.build import build
from fastmtl.inference.path import InferencePath, Sample, path_name, unavailable
from fastmtl.options import FILE_RUNTIMES
from fastmtl.runtime import CpuInfo

__all__ = ["AUTO_MIN_IMAGES", "ORT_EXPORT_PIXELS", "Decision", "candidates", "decision_file", "measure", "plan_auto"]

AUTO_MIN_IMAGES = 1000  # below this a first run does not earn back measuring and compiling (module docstring)
# ONNX Runtime's fp32 export (~25 s on 2 cores, whatever the image size) pays back after about this many 224 px
# images (0.62 s -> 0.47 s per image measured at batch 8); a job of fewer pixels than that exports nothing.
ORT_EXPORT_PIXELS = 200 * 224 * 224


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

    def path(self, cpu: CpuInfo) -> InferencePath:
        return InferencePath(self.precision, self.runtime, self.compile, cpu)

    def describe(self) -> str:
        return f"precision {self.name}: {self.reason}" + (" (cached decision)" if self.cached else "")


def decision_file(checkpoint: str | os.PathLike, shape: Sequence[int], cpu: CpuInfo) -> Path:
    """Where ``auto`` caches its decision: keyed by checkpoint (path, size, mtime), input shape (B, C, H, W), CPU,
    torch and whether ONNX Runtime and OpenVINO are installed."""
    st = Path(checkpoint).stat()
    raw = json.dumps([str(Path(checkpoint).resolve()), st.st_size, st.st_mtime_ns, list(shape), cpu.key,
                      torch.__version__, onnxrt.missing() is None, openvino_rt.missing() is None])  # fmt: skip
    return default_cache_dir() / "precision" / (hashlib.sha256(raw.encode()).hexdigest()[:24] + ".json")


def _rounds(net: nn.Module, example: torch.Tensor, rounds: int, give_up_after: float = float("inf")) -> list[float]:
    """Seconds per call of ``net`` on ``example`` after one untimed call: ``rounds`` of them, or only the first when
    it already took longer than ``give_up_after``."""
    times: list[float] = []
    with torch.inference_mode():
        net(example)
        for _ in range(rounds):
            start = time.perf_counter()
            net(example)
            times.append(time.perf_counter() - start)
            if times[0] > give_up_after:
                break
    return times


def _median(times: list[float]) -> float:
    return sorted(times)[len(times) // 2]


# The order ``auto`` times its candidates in: the likely fastest first, so that the slow ones are seen to be slow
# after one round (:data:`GIVE_UP`). It decides nothing: every candidate is timed, and the fastest within tolerance
# is taken.
_FIRST = {"int8": 0, "bf16": 1, "fp16": 2, "fp32": 3}
GIVE_UP = 1.5  # a candidate whose first round is this much slower than the fastest median so far gets no more rounds


def candidates(device: torch.device, cpu: CpuInfo) -> list[InferencePath]:
    """The CPU paths ``auto`` measures, from ``cpu``'s facts and the runtimes installed. With OpenVINO: its fp32,
    bf16 (where native) and int8, beside ONNX Runtime's, and no compiled torch path (OpenVINO's bf16 and int8 were
    faster than torch's compiled ones, and a compiled path costs every process its compile). Else with ONNX Runtime,
    torch's compiled fp32 and (without VNNI) torchao's int8 are left out: ONNX Runtime's paths gave the same outputs
    faster on the CPUs where both were measured."""
    ort, ov = onnxrt.missing() is None, openvino_rt.missing() is None
    found = [InferencePath("fp32", "torch", False, cpu)]
    found += [InferencePath(p, "onnxruntime", False, cpu) for p in ("fp32", "int8")] if ort else []
    found += [] if ort or ov else [InferencePath("fp32", "torch", True, cpu)]
    found += [InferencePath(p, "openvino", False, cpu) for p in ("fp32", "bf16", "int8") if ov]
    for precision in () if ov else ("bf16", "int8"):
        if precision == "bf16" or not ort or cpu.int8_vnni:
            found.append(InferencePath(precision, "torch", True, cpu))
    return [path for path in found if unavailable(path, device) is None]


def plan_auto(
    device: torch.device | str,
    checkpoint: str | os.PathLike,
    shape: Sequence[int],
    n_images: int,
    cpu: CpuInfo,
    min_images: int = AUTO_MIN_IMAGES,
    model: nn.Module | None = None,
) -> Decision | None:
    """What ``auto`` runs without measuring, or None when it measures.

    bf16 on CUDA; a decision cached for this checkpoint, batch shape ``shape`` and CPU (for a job of fewer than
    ``min_images`` images only when it compiles nothing: an ONNX Runtime or OpenVINO path, whose files are cached
    too). Any other job of fewer than ``min_images`` images runs fp32: on ONNX Runtime when it is installed and
    either the job has :data:`ORT_EXPORT_PIXELS` pixels or more or ``model``'s file is already cached, else on torch.
    """
    if torch.device(device).type == "cuda":
        return Decision("bf16", False, {}, {}, "CUDA: bf16 autocast")
    cache = decision_file(checkpoint, shape, cpu)
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        cached = Decision(**{**json.loads(cache.read_text()), "cached": True})
        if n_images >= min_images or cached.runtime in FILE_RUNTIMES:
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


def measure(
    model: nn.Module,
    checkpoint: str | os.PathLike,
    sample: Sample,
    cpu: CpuInfo,
    *,
    n_images: int,
    log: Callable[[str], None] = print,
) -> tuple[Decision, nn.Module | None]:
    """Builds every path this CPU runs (:func:`candidates`) and times it on the sample's first batch (three rounds,
    or one for a path :data:`GIVE_UP` times slower than the fastest so far); then compares them with fp32 on the
    sample's held-out images (:attr:`Sample.held_out`, which int8 did not calibrate on; its calibration images when
    it has no others), all at once (:func:`agreement`), fastest first, and takes the first within
    tolerance (the slower ones are not compared: ``Decision.agreement`` holds those compared). Caches the decision
    (:func:`decision_file`). Returns the decision and the chosen path built (None when no path measured).

    Args:
        model: the loaded model, on its device.
        checkpoint: its file (part of the cache key).
        sample: the job's images (at least one batch); its ``refresh`` says whether cached int8 files are calibrated
            anew on them.
        cpu: the CPU's facts.
        n_images: the job's size (for the log).
        log: where progress lines go.
    """
    batches = sample.batches
    example, paths = batches[0], candidates(next(model.parameters()).device, cpu)
    checked = sum(b.shape[0] for b in sample.held_out) or sum(b.shape[0] for b in batches)
    log(f"auto: a job of {n_images} images: timing {', '.join(p.name for p in paths)} against eager fp32 and "
        f"comparing the fastest with fp32 on {checked} of its images"
        + (" (not the ones int8 calibrates on)" if sample.held_out else "")
        + "; this takes minutes once (exports, calibration, compiles), then jobs with this checkpoint, input shape "
        "and CPU reuse the decision")  # fmt: skip
    speeds, agreements, nets = {"eager": example.shape[0] / _median(_rounds(model.eval(), example, 3))}, {}, {}
    for path in sorted(paths, key=lambda p: (_FIRST.get(p.precision, 9), p.runtime == "torch")):
        log(f"auto: building and timing {path.name} at batch {example.shape[0]}")
        start = time.perf_counter()
        try:
            nets[path] = build(path, model, sample, log=log)
        except Exception as e:  # a path that fails to build here is not taken, and the reason is shown
            log(f"auto: {path.name} could not be built ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            continue
        fastest = max((v for k, v in speeds.items() if k != "eager"), default=0.0)
        times = _rounds(nets[path], example, 3, give_up_after=GIVE_UP * example.shape[0] / fastest if fastest else
                        float("inf"))  # fmt: skip
        speeds[path.name] = example.shape[0] / _median(times)
        log(f"auto: {path.name} {speeds[path.name]:.2f} images/s ({speeds[path.name] / speeds['eager']:.2f}x eager "
            f"fp32), built in {time.perf_counter() - start:.0f} s" + (f"; more than {GIVE_UP}x slower than the "
            "fastest after one round: no more rounds" if len(times) == 1 else ""))  # fmt: skip
    # The fastest first, compared with fp32 on images int8 was not calibrated on (the calibration images when the
    # job has no others), until one is within tolerance: the slower ones could not be taken whatever their agreement.
    checks = sample.held_out or batches
    with torch.inference_mode():
        reference = cat_outputs([model.eval()(batch) for batch in checks])
    best = None
    for path in sorted(nets, key=lambda p: -speeds[p.name]):
        with torch.inference_mode():
            agreements[path.name] = agreement(reference, cat_outputs([nets[path](batch) for batch in checks]))
        ok = within_tolerance(agreements[path.name])
        log(f"auto: {path.name} against fp32 {describe(agreements[path.name])}: "
            + ("within tolerance" if ok else "outside tolerance"))  # fmt: skip
        if ok:
            best = (path, nets[path])
            break
    if best is None:
        return Decision("fp32", False, speeds, agreements, "no path measured"), None
    path, net = best
    reason = (f"{speeds[path.name]:.2f} images/s, {speeds[path.name] / speeds['eager']:.2f}x eager fp32, within "
              f"tolerance of fp32 ({describe(agreements[path.name])})")  # fmt: skip
    decision = Decision(path.precision, path.compile, speeds, agreements, reason, runtime=path.runtime)
    atomic_write_json(decision_file(checkpoint, sample.shape, cpu),
                      {k: v for k, v in asdict(decision).items() if k != "cached"})  # fmt: skip
    return decision, net
