"""Device telemetry and measurement helpers for the benchmark suite.

Everything here is safe to import on a machine without a GPU: NVML (``pynvml`` from nvidia-ml-py) and Triton are
optional imports, and every probe returns what it could read instead of raising.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import os
import platform
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fastmtl.models.base import set_kernel_backend


def dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvml():
    """The initialised ``pynvml`` module, or None without nvidia-ml-py or an NVIDIA driver."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound / DriverNotLoaded on machines without a GPU
        return None
    return pynvml


def _nvml_read(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # a field the GPU or driver does not report
        return None


def gpu_snapshot(index: int = 0) -> dict[str, Any]:
    """Current NVML readings of GPU ``index``: clocks (MHz), power (W), memory (MiB), temperature, utilisation.

    Empty without NVML. Taken right after a timed run so the clocks and power are the loaded ones.
    """
    nv = _nvml()
    if nv is None:
        return {}
    h = _nvml_read(lambda: nv.nvmlDeviceGetHandleByIndex(index))
    if h is None:
        return {}
    mem = _nvml_read(lambda: nv.nvmlDeviceGetMemoryInfo(h))
    util = _nvml_read(lambda: nv.nvmlDeviceGetUtilizationRates(h))
    power = _nvml_read(lambda: nv.nvmlDeviceGetPowerUsage(h))
    snap = {
        "sm_clock_mhz": _nvml_read(lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
        "mem_clock_mhz": _nvml_read(lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
        "power_w": None if power is None else power / 1000.0,
        "temperature_c": _nvml_read(lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
        "gpu_util_pct": None if util is None else util.gpu,
        "mem_used_mib": None if mem is None else mem.used / 2**20,
    }
    return {k: v for k, v in snap.items() if v is not None}


def gpu_static_info(index: int = 0) -> dict[str, Any]:
    """Name, driver, max clocks, power limit and total memory of GPU ``index`` (NVML, then torch.cuda)."""
    info: dict[str, Any] = {}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(index)
        info.update(
            name=props.name,
            capability=f"{props.major}.{props.minor}",
            sm_count=props.multi_processor_count,
            memory_total_mib=props.total_memory / 2**20,
        )
    nv = _nvml()
    if nv is None:
        return info
    h = _nvml_read(lambda: nv.nvmlDeviceGetHandleByIndex(index))
    if h is None:
        return info
    limit = _nvml_read(lambda: nv.nvmlDeviceGetPowerManagementLimit(h))
    name = _nvml_read(lambda: nv.nvmlDeviceGetName(h))
    extra = {
        "name": name.decode() if isinstance(name, bytes) else name,
        "driver": _nvml_read(nv.nvmlSystemGetDriverVersion),
        "max_sm_clock_mhz": _nvml_read(lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM)),
        "max_mem_clock_mhz": _nvml_read(lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM)),
        "power_limit_w": None if limit is None else limit / 1000.0,
    }
    info.update({k: v for k, v in extra.items() if v is not None})
    return info


def machine_info() -> dict[str, Any]:
    """What the results depend on: CPU, threads, load, GPU, and the library versions."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "triton": dist_version("triton"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "fastmtl": dist_version("fastmtl"),
        "segmentation_models_pytorch": dist_version("segmentation-models-pytorch"),
        "cuda_available": torch.cuda.is_available(),
    }
    if hasattr(os, "getloadavg"):
        # Other work on the machine skews CPU timings; the load average says how much there was.
        info["load_avg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    if torch.cuda.is_available():
        info["gpu"] = gpu_static_info()
    return info


def kernel_configs() -> dict[str, Any]:
    """The Triton kernel configurations autotuning picked in this process, per kernel and shape key ({} if none)."""
    from fastmtl.kernels import chosen_configs

    return chosen_configs()


def _slug(text: str) -> str:
    text = re.sub(r"\(r\)|\(tm\)|\bcpu\b|@.*$", "", text.lower())
    return re.sub(r"[^a-z0-9.]+", "-", text).strip("-")


def device_slug(info: dict[str, Any]) -> str:
    """File-name stem for a result file, e.g. ``cpu-amd-epyc-torch2.14.1`` or ``nvidia-h100-...-triton3.8.0``."""
    torch_version = str(info.get("torch", "unknown")).split("+")[0]
    gpu = info.get("gpu") or {}
    if gpu.get("name"):
        triton = info.get("triton")
        suffix = f"-torch{torch_version}" + (f"-triton{triton}" if triton else "")
        return _slug(gpu["name"]) + suffix
    return f"cpu-{_slug(str(info.get('cpu_model', 'unknown')))}-torch{torch_version}"


def synchronize(device: torch.device | str) -> None:
    """Waits for queued CUDA work (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def synchronized(fn: Callable[[], Any], device: torch.device | str) -> Callable[[], Any]:
    """``fn`` followed by a CUDA synchronise, so the timed region ends when the GPU work does."""
    device = torch.device(device)
    if device.type != "cuda":
        return fn

    def call() -> Any:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return call


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (convolutions and matrix products; 1 multiply-add = 2 FLOPs).

    Run ``fn`` on meta tensors where possible: the counter only needs shapes.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


_FLOPS: dict[tuple[str, int, bool], int] = {}


def model_flops(key: str, model: nn.Module, img_size: int, train: bool = False) -> int:
    """FLOPs per image of ``model``; counted once per (``key``, size, train) per process.

    A copy of the model is moved to the meta device with a one-image input, so counting costs no compute.
    ``train`` counts forward + backward (the backward of a linear or conv is two products of the forward's size).
    """
    cache_key = (key, img_size, train)
    if cache_key in _FLOPS:
        return _FLOPS[cache_key]
    meta = copy.deepcopy(model).to("meta").train(train)
    set_kernel_backend(meta, "reference")  # count the reference ops, whatever backend the timed model used
    x = torch.empty(1, 3, img_size, img_size, device="meta", requires_grad=train)

    def run() -> None:
        out = meta(x)
        if train:
            loss = sum(t.float().sum() for t in _tensors(out))
            loss.backward()

    _FLOPS[cache_key] = count_flops(run)
    return _FLOPS[cache_key]


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out if isinstance(t, torch.Tensor)]


def peak_memory_mib(device: torch.device | str) -> float | None:
    """Peak allocated CUDA memory since the last reset (None on CPU: not measured there)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def reset_peak_memory(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
