"""The one place a request becomes an inference path: :func:`resolve`.

    request = Request("auto")                                   # checked against fastmtl.options here
    path = resolve(request, device=dev, cpu=cpu_info(), n_images=len(dataset), sample=sample, model=model,
                   checkpoint=checkpoint)
    net = build(path, model, sample)                            # fastmtl.inference.build

An explicit precision runs on the runtime asked for (``auto``: :func:`~fastmtl.inference.path.auto_runtime`); one
this machine cannot run falls back to fp32 with the reason (or raises :class:`PrecisionUnavailable`, ``fallback=
False``). ``auto`` is bf16 on CUDA and, on a CPU, what :func:`~fastmtl.inference.precision.plan_auto` decides or,
for a large job, what :func:`~fastmtl.inference.precision.measure` measures (the built winner stays on the sample,
so it is not built twice). A path that needs the job's images (int8, a compiled path, measuring) when none of them
reads falls back to fp32, and the batch loop then reports every file.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn

from fastmtl.inference import onnxrt, openvino_rt
from fastmtl.inference.path import InferencePath, PrecisionUnavailable, Request, Sample, auto_runtime, unavailable
from fastmtl.inference.precision import measure, plan_auto
from fastmtl.options import FILE_RUNTIMES
from fastmtl.runtime import CpuInfo

__all__ = ["resolve"]


def resolve(
    request: Request,
    *,
    device: torch.device | str,
    cpu: CpuInfo,
    n_images: int,
    sample: Sample,
    model: nn.Module | None = None,
    checkpoint: str | os.PathLike | None = None,
    fallback: bool = True,
    log: Callable[[str], None] = print,
) -> InferencePath:
    """The path ``request`` runs as on ``device`` and ``cpu`` for a job of ``n_images`` images (module docstring).

    Args:
        request: what was asked for (already checked when it was made).
        device: where the model runs.
        cpu: the CPU's facts (:func:`fastmtl.runtime.cpu_info`).
        n_images: the job's size: ``auto`` measures for large jobs only.
        sample: the job's images (read only when the path needs them).
        model: the model, on ``device``; ``auto`` on a CPU measures it and looks for its cached ONNX file.
        checkpoint: its file, the key of ``auto``'s cached decision (needed for ``auto`` on a CPU).
        fallback: run fp32 when the precision asked for cannot run here (False: raise).
        log: where the choice and its reasons go.

    Raises:
        PrecisionUnavailable: with ``fallback=False``, the precision cannot run here; the message says why.
        ValueError: ``compile`` on the runtime ``auto`` picked for int8, or ``auto`` on a CPU without
            ``model`` and ``checkpoint``.
    """
    device = torch.device(device)
    if not request.optimize:  # the model as saved, in fp32, or bf16 on CUDA for auto
        cuda_auto = request.precision == "auto" and device.type == "cuda"
        return InferencePath("bf16" if cuda_auto else "fp32", "torch", False, cpu, optimize=False)
    if request.precision == "auto":
        path = _auto(request, device, cpu, n_images, sample, model, checkpoint, log)
    else:
        path = _explicit(request, device, cpu, fallback, log)
    return _unreadable(cpu, log) if path.needs_images and not sample.batches else path


def _unreadable(cpu: CpuInfo, log) -> InferencePath:
    """fp32 for a job none of whose images reads: the batch loop then reports every file."""
    log("no readable image to calibrate or compile on; running fp32")
    return InferencePath("fp32", "torch", False, cpu)


def _explicit(request: Request, device: torch.device, cpu: CpuInfo, fallback: bool, log) -> InferencePath:
    runtime = auto_runtime(request.precision, device) if request.runtime == "auto" else request.runtime
    if request.compile and runtime in FILE_RUNTIMES:
        raise ValueError(f"compile applies to the torch runtime; {runtime} optimizes its own graph (--runtime auto "
                         f"picked it for {request.precision}: add --runtime torch)")  # fmt: skip
    path = InferencePath(request.precision, runtime, request.compile, cpu)
    reason = unavailable(path, device)
    if reason is None:
        return path
    if not fallback:
        raise PrecisionUnavailable(reason)
    log(f"precision {request.precision} is not available here: {reason}; running fp32 instead")
    return InferencePath("fp32", "torch", request.compile, cpu)


def _auto(request: Request, device: torch.device, cpu: CpuInfo, n_images: int, sample: Sample, model, checkpoint,
          log) -> InferencePath:  # fmt: skip
    if device.type == "cpu" and (model is None or checkpoint is None):
        raise ValueError("precision auto on a CPU needs the model and its checkpoint file (its decision is cached "
                         "per checkpoint); or name a precision")  # fmt: skip
    if device.type == "cpu" and onnxrt.missing():
        log(f"auto: {onnxrt.missing()} (its fp32 and int8 are the fastest CPU paths measured: docs/INFERENCE.md)")
    elif device.type == "cpu" and openvino_rt.missing():
        log(f"auto: {openvino_rt.missing()} (its int8 is the fastest CPU path measured: docs/INFERENCE.md)")
    plan = plan_auto(device, checkpoint, sample.shape, n_images, cpu, model=model)
    if plan is not None:
        log(f"auto: {plan.describe()}{'' if plan.cached else '; --precision chooses another'}")
        compile = plan.compile or (request.compile and plan.runtime == "torch")
        return InferencePath(plan.precision, plan.runtime, compile, cpu)
    if not sample.batches:
        return _unreadable(cpu, log)
    decision, net = measure(model, checkpoint, sample, cpu, n_images=n_images, log=log)
    log(f"auto: {decision.describe()}")
    path = decision.path(cpu)
    if net is not None:
        sample.built[path] = net
    return path
