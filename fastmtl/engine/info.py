"""``fastmtl info``: versions, devices and the registered models with their parameter counts."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

import torch

from fastmtl.registry import create_model, list_models

__all__ = ["format_info", "parameter_count", "system_info"]

_PACKAGES = ("fastmtl", "torch", "torchvision", "triton", "numpy", "safetensors", "scikit-learn", "matplotlib")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def parameter_count(name: str, **options: Any) -> int:
    """Parameters of model ``name`` built with ``options``; built on the meta device when the model allows it."""
    try:
        with torch.device("meta"):
            model = create_model(name, **options)
    except (NotImplementedError, RuntimeError):  # a constructor that reads tensor values cannot run on meta
        with torch.random.fork_rng(devices=[]):
            model = create_model(name, **options)
    return sum(p.numel() for p in model.parameters())


def _devices() -> list[dict[str, Any]]:
    devices = [{"name": "cpu", "detail": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            detail = f"{props.name}, {props.total_memory / 2**30:.1f} GiB, sm_{props.major}{props.minor}"
            devices.append({"name": f"cuda:{i}", "detail": detail})
    return devices


def system_info(img_size: int = 224) -> dict[str, Any]:
    """Versions, devices and ``{model name: parameter count at img_size}``."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {p: _version(p) for p in _PACKAGES},
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "devices": _devices(),
        "img_size": img_size,
        "models": {name: parameter_count(name, img_size=img_size) for name in list_models()},
    }


def format_info(info: dict[str, Any]) -> str:
    """Human-readable text of :func:`system_info`."""
    lines = [f"python       {info['python']} ({info['platform']})"]
    lines += [f"{name:<12} {version or 'not installed'}" for name, version in info["versions"].items()]
    lines += ["", "devices"]
    lines += [f"  {d['name']:<8} {d['detail']}" for d in info["devices"]]
    if info["cuda"] is None:
        lines.append("  (no CUDA device visible)")
    lines += ["", f"models (parameters at img_size {info['img_size']})"]
    lines += [f"  {name:<24} {count:>12,}" for name, count in info["models"].items()]
    return "\n".join(lines)
