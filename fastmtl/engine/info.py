"""``fastmtl info``: versions, devices, what this CPU's inference paths can use, the cache folder, and the
registered models with their parameter counts."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

import torch

from fastmtl.data.cache import default_cache_dir
from fastmtl.inference import onnxrt, openvino_rt
from fastmtl.registry import create_model, list_models
from fastmtl.runtime import CPU_ENV, cpu_info

__all__ = ["format_info", "parameter_count", "system_info"]

_PACKAGES = ("fastmtl", "torch", "torchvision", "triton", "numpy", "safetensors", "scikit-learn", "matplotlib",
             "onnxruntime", "openvino", "nncf", "torchao")  # fmt: skip


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


def _cpu_paths() -> dict[str, Any]:
    """What ``--precision`` can use on this CPU (:func:`fastmtl.runtime.cpu_info`, :func:`inference.onnxrt.missing`)."""
    cpu = cpu_info()
    return {"cpu": cpu.name, "isa": cpu.isa, "kind": cpu.kind, "bf16": cpu.bf16, "int8_vnni": cpu.int8_vnni,
            "amx": cpu.amx, "simulated": os.environ.get(CPU_ENV) or None,
            "onnxruntime_missing": onnxrt.missing(), "openvino_missing": openvino_rt.missing()}  # fmt: skip


def _cache() -> dict[str, Any]:
    """The cache folder, the size of its ONNX files and their bound (or why the bound is malformed)."""
    folder = default_cache_dir()
    onnx = sum(path.stat().st_size for path in (folder / "onnx").glob("*.onnx")) if (folder / "onnx").is_dir() else 0
    try:
        limit: int | str = onnxrt.cache_limit_bytes()
    except ValueError as e:
        limit = str(e)
    return {"folder": str(folder), "onnx_bytes": onnx, "onnx_limit_bytes": limit}


def system_info(img_size: int = 224) -> dict[str, Any]:
    """Versions, devices, the CPU's inference paths, the cache and ``{model name: parameter count at img_size}``."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {p: _version(p) for p in _PACKAGES},
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "devices": _devices(),
        "cpu_paths": _cpu_paths(),
        "cache": _cache(),
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
    cpu = info["cpu_paths"]
    simulated = f"; simulated by {CPU_ENV}={cpu['simulated']}" if cpu["simulated"] else ""
    lines += ["", f"CPU inference paths ({cpu['cpu']}, {cpu['kind']}{simulated})"]
    lines.append("  bf16         " + ("native (oneDNN)" if cpu["bf16"] else "not native: --precision bf16 runs fp32"))
    lines.append("  int8         " + ("VNNI: 8-bit weights" if cpu["int8_vnni"] else "no VNNI: 7-bit weights"))
    ort = cpu["onnxruntime_missing"]
    lines.append("  onnxruntime  " + (f"not usable: {ort}" if ort else "fp32 and int8 run on ONNX Runtime"))
    ov = cpu["openvino_missing"]
    lines.append(
        "  openvino     " + (f"not usable: {ov}" if ov else "fp32, bf16 (where native) and int8 run on OpenVINO")
    )
    cache, limit = info["cache"], info["cache"]["onnx_limit_bytes"]
    bound = f"at most {limit / 1e9:g} GB" if isinstance(limit, int) else limit
    lines += ["", f"cache        {cache['folder']} (ONNX files: {cache['onnx_bytes'] / 1e9:.2f} GB, {bound})"]
    lines += ["", f"models (parameters at img_size {info['img_size']})"]
    lines += [f"  {name:<24} {count:>12,}" for name, count in info["models"].items()]
    return "\n".join(lines)
