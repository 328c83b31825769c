"""Initialising the ResNet-34 trunk from a local torchvision-format ImageNet state_dict (no downloads)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from fastmtl.files import check_regular
from fastmtl.models.resformer import ResNet34Trunk

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    """What a weight-loading call did with each key."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # source keys with no place in the model (e.g. fc.*)
    mismatched: list[str] = field(default_factory=list)  # present on both sides with different shapes
    missing: list[str] = field(default_factory=list)  # trunk keys the file did not provide

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        for name in ("skipped", "mismatched", "missing"):
            keys = getattr(self, name)
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys) - 8} more)" if len(keys) > 8 else "")
                lines.append(f"{name} {len(keys)}: {shown}")
        return "; ".join(lines)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads a state_dict from ``.safetensors`` or a torch file (``weights_only``: no pickled code runs)."""
    path = check_regular(path, "weights file")  # missing, or a FIFO that would block the reader
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or unsafe files
        raise ValueError(f"cannot read weights file {path} as a tensor-only torch file: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"weights file {path} does not hold a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _find_trunk(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, ResNet34Trunk):
            return module
    raise TypeError(f"{type(model).__name__} has no ResNet-34 trunk to load weights into")


def load_trunk_weights(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Copies matching tensors of a torchvision ResNet-34 state_dict into the model's trunk.

    The stride-1 stem keeps the 7x7 kernel shape, so ImageNet weights fit it. Keys are matched by name
    (``conv1.weight``, ``layer3.2.bn1.running_mean``, ...); ``fc.*`` is skipped, shape mismatches (e.g.
    ``conv1.weight`` with ``in_chans != 3``) are reported and left at their initial values.

    Returns:
        A :class:`LoadReport`; it is also logged at INFO level.
    """
    source = read_state_dict(path)
    trunk = _find_trunk(model)
    own = trunk.state_dict()
    report, update = LoadReport(), {}
    for key, value in source.items():
        if key not in own:
            report.skipped.append(key)
        elif own[key].shape != value.shape:
            report.mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
        else:
            update[key] = value
            report.loaded.append(key)
    report.missing = [k for k in own if k not in source]
    if not update:
        raise ValueError(f"no tensor of {path} matches a ResNet-34 trunk (torchvision key names); {report}")
    trunk.load_state_dict(update, strict=False)
    log.info("trunk weights from %s: %s", path, report)
    return report
