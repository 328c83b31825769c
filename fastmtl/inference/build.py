"""An :class:`~fastmtl.inference.path.InferencePath` built into something to run: a torch module, an ONNX Runtime
session or an OpenVINO compiled model, each called like a fastmtl model (``(B, C, H, W) -> MTLOutput`` of fp32
logits). The path was resolved and checked by :func:`fastmtl.inference.resolve.resolve`; nothing here decides again.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fastmtl.inference import onnxrt, openvino_rt
from fastmtl.inference.optimize import InferenceModel, optimized
from fastmtl.inference.path import InferencePath, Sample
from fastmtl.inference.torch_paths import FixedBatch, inductor_cpu, quantize_int8
from fastmtl.output import MTLOutput

__all__ = ["build"]


def build(path: InferencePath, model: nn.Module, sample: Sample, *, log: Callable[[str], None] = print) -> nn.Module:
    """``model`` (left unchanged) ready to run ``path`` on the device it sits on, for batches shaped like the
    sample's; compiled paths are built and warmed up now, at that shape, not at the first real batch.

    Args:
        path: what to build (:func:`~fastmtl.inference.resolve.resolve`).
        model: a fastmtl model.
        sample: the job's images (int8's calibration, a compiled path's warm-up) and whether cached int8 files are
            calibrated anew; a path already built on it (``auto``'s measurement) is returned as it is.
        log: where ONNX Runtime's and OpenVINO's export and calibration lines go.
    """
    if path in sample.built:
        return sample.built[path]
    if not path.optimize:  # the model as saved; on CUDA ``auto`` runs it under bf16 autocast
        return model if path.dtype is None else InferenceModel(model, False, path.dtype, cuda_graphs=False)
    example = sample.example(path)
    calibration = sample.batches if path.precision == "int8" else None
    if path.runtime == "onnxruntime":
        return onnxrt.build(model, path.precision, example, calibration=calibration, refresh=sample.refresh,
                            int8_vnni=path.cpu.int8_vnni, log=log)  # fmt: skip
    if path.runtime == "openvino":
        net = openvino_rt.build(model, path.precision, example, path.cpu, calibration=calibration,
                                refresh=sample.refresh, log=log)  # fmt: skip
        return FixedBatch(net, example.shape[0], lambda out: out)
    device = next(model.parameters()).device
    if path.precision == "int8":
        batches = [b.to(device) for b in calibration]
        full = [b for b in batches if b.shape[0] == example.shape[0]]  # exported at one shape; padding would skew
        batches = full or [F.pad(batches[0], (0, 0, 0, 0, 0, 0, 0, example.shape[0] - batches[0].shape[0]))]
        net = FixedBatch(torch.compile(quantize_int8(model, batches)), example.shape[0], lambda out: MTLOutput(*out))
    else:
        net = optimized(model, path.dtype, mode="default" if path.compile else None)
        if path.compile:
            net = FixedBatch(net, example.shape[0], lambda out: out)
    if path.precision == "int8" or path.compile:
        with inductor_cpu() if device.type == "cpu" else contextlib.nullcontext(), torch.inference_mode():
            net(example.to(device))  # compile now, inside the freezing patch, not at the first real batch
    return net
