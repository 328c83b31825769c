"""The model as exports trace it: reference layers, BatchNorms folded, the present outputs as a plain tuple, a
dynamic batch of 1..1024; and the ONNX writer that ``fastmtl export`` and the ONNX Runtime paths share."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastmtl.files import replacing
from fastmtl.inference.optimize import fold_batchnorms
from fastmtl.models.base import MTLModel
from fastmtl.options import MAX_EXPORT_BATCH, require

__all__ = ["batch_dim", "deployable", "flat", "output_names", "require", "write_onnx"]


def output_names(model: nn.Module, x: torch.Tensor) -> list[str]:
    with torch.inference_mode():
        out = model(x)
    return [name for name, t in zip(out._fields, out) if t is not None]


def flat(out: Any) -> list[torch.Tensor]:
    return [t for t in out if t is not None]


class _TupleOutputs(nn.Module):
    """Returns the present outputs as a plain tuple (seg_logits, cls_logits minus the None ones).

    A plain tuple keeps the package free of a pytree registration for :class:`~fastmtl.output.MTLOutput`, and a
    C++ runner receives exactly the tensors named by the ``outputs`` metadata.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(flat(self.model(x)))


def deployable(model: MTLModel) -> nn.Module:
    """A copy of ``model`` as exports trace it: reference layers, BatchNorms folded, outputs a plain tuple."""
    net = _TupleOutputs(copy.deepcopy(model).set_backend("reference")).eval().requires_grad_(False)
    fold_batchnorms(net)
    return net


def batch_dim(dynamic_batch: bool) -> tuple[dict[int, Any], ...] | None:
    """``dynamic_shapes`` for an export whose batch is dynamic (1..1024), or None for a fixed one. Trace a dynamic
    batch with an example of at least 2: a dimension traced at size 1 is specialised to 1."""
    return ({0: torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)},) if dynamic_batch else None


def write_onnx(model: nn.Module, example: torch.Tensor, out: Path, dynamic, names, metadata) -> Path:
    """Writes ``model`` (as :func:`deployable` returns it) traced at ``example`` to the ONNX file ``out``, whole or
    not at all."""
    require("onnx", "onnxscript", what="ONNX export")
    import onnx

    program = torch.onnx.export(
        model, (example,), dynamo=True, dynamic_shapes=dynamic, input_names=["image"], output_names=names
    )
    with replacing(out) as tmp:
        program.save(tmp)
        proto = onnx.load(tmp)
        onnx.helper.set_model_props(proto, metadata)
        onnx.save(proto, tmp)
    return out
