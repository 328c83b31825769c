"""Where and in what precision a model runs: device resolution, the one mixed-precision vocabulary, threads fitted
to the idle cores, and what the CPU computes natively (:func:`cpu_info`).

Training (``TrainConfig.amp``), evaluation, prediction and inference all name mixed precision the same way:

=========  ===========================================
``amp``    autocast dtype
=========  ===========================================
"auto"     bf16 on CUDA, none elsewhere (the default)
"bf16"     bfloat16 on any device (also ``True``)
"fp16"     float16 (training adds a grad scaler)
"off"      none: fp32 (also ``False``)
=========  ===========================================

A ``torch.dtype`` is accepted as well (``torch.float32`` means "off"). ``None`` is not a setting: it meant "auto"
in one place and "off" in another, so it raises.
"""

from __future__ import annotations

import os
import platform
import time
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch

from fastmtl.options import AMP_CHOICES

__all__ = [
    "CPU_ENV",
    "SIMULATED_CPUS",
    "Amp",
    "CpuInfo",
    "amp_dtype",
    "autocast",
    "available_cpus",
    "batch_to_device",
    "cpu_info",
    "default_workers",
    "fit_threads",
    "idle_cpus",
    "resolve_device",
]

Amp = Literal["auto", "bf16", "fp16", "off"] | bool | torch.dtype

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None, True: torch.bfloat16, False: None}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; any other name or device as ``torch.device``.

    Raises:
        ValueError: CUDA was asked for and torch sees no CUDA device.
    """
    if isinstance(name, torch.device):
        device = name
    elif name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(name)!r} was requested but torch sees no CUDA device; use --device cpu")
    return device


def amp_dtype(amp: Amp, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for an ``amp`` setting on ``device`` (None: no autocast); see the module table.

    Raises:
        ValueError: ``amp`` is not in the vocabulary.
    """
    if isinstance(amp, torch.dtype):
        return None if amp == torch.float32 else amp
    if amp == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else None
    if isinstance(amp, (str, bool)) and amp in _DTYPES:
        return _DTYPES[amp]
    raise ValueError(f"amp={amp!r} is not valid; expected one of {', '.join(AMP_CHOICES)}, True, False or a dtype")


def autocast(device: torch.device | str, amp: Amp = "auto") -> AbstractContextManager:
    """``torch.autocast`` for ``amp`` on ``device``'s type, or a no-op context when it resolves to no autocast."""
    device = torch.device(device)
    dtype = amp_dtype(amp, device)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def batch_to_device(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    """A sample-dict batch's tensors on ``device`` (non-blocking from pinned memory; other values dropped), the
    image channels-last when asked."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if channels_last:
        out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
    return out


# ------------------------------------------------------------------------------------ CPU threads and workers
# On a small machine the defaults oversubscribe: torch's intra-op threads plus DataLoader workers decoding images
# compete for the same cores (measured on a 2-core machine: `fastmtl predict` 1.6x faster with no workers, 10x
# when another job held the cores). So fastmtl sizes both from the cores this process may actually use.


def _cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (v2 ``cpu.max`` or v1 ``cfs_quota_us``), None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (containers), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpus()
    return max(1, min(cpus, int(quota)) if quota else cpus)


def default_workers(device: torch.device | str, cpus: int | None = None) -> int:
    """Image-decoding worker processes for evaluation and prediction on ``device``.

    On a CPU the model, not the decoding, is the bottleneck, and workers take cores from it: none up to 4 cores,
    then a quarter of them. On CUDA the host only decodes: all cores but one, at most 8.
    """
    cpus = available_cpus() if cpus is None else cpus
    if torch.device(device).type == "cuda":
        return max(0, min(8, cpus - 1))
    return 0 if cpus <= 4 else cpus // 4


def idle_cpus(cpus: set[int] | None = None, interval: float = 0.1, stat: Path = Path("/proc/stat")) -> float | None:
    """How many of ``cpus`` (default: this process's affinity) sat idle over the next ``interval`` seconds, from
    the kernel's per-CPU counters; None where they cannot be read (not Linux).

    Another job holding the cores is the case that hurts: OpenMP threads that wait for a preempted sibling made
    ``fastmtl predict`` 6x slower with 2 threads than with 1 on a 2-core machine whose cores another job held
    (1.7 vs 9.9 images/s), while with the cores free 2 threads win.
    """

    def sample() -> dict[int, tuple[int, int]]:
        counts = {}
        for line in stat.read_text().splitlines():
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                values = [int(v) for v in fields[:8]]
                counts[int(name[3:])] = (values[3] + values[4], sum(values))  # idle + iowait, all
        return counts

    try:
        cpus = set(os.sched_getaffinity(0)) if cpus is None else cpus
        before = sample()
        time.sleep(interval)
        after = sample()
    except (OSError, ValueError, AttributeError, IndexError):
        return None
    idle = 0.0
    for cpu in cpus & before.keys() & after.keys():
        total = after[cpu][1] - before[cpu][1]
        idle += (after[cpu][0] - before[cpu][0]) / total if total > 0 else 1.0
    return idle


def fit_threads(workers: int, cpus: int | None = None, idle: float | None = None) -> int:
    """Sets torch's intra-op threads to the cores left beside ``workers`` decoding processes, and no more than the
    cores idle right now (``idle``, measured by :func:`idle_cpus` when not given), at least 1; returns the count.

    Inter-op threads go to 1 where torch still allows it (before any inter-op work in this process): fastmtl's
    models run one graph at a time, and a pool sized to every core only adds sleeping threads beside the
    intra-op ones."""
    cpus = available_cpus() if cpus is None else cpus
    idle = idle_cpus() if idle is None else idle
    free = cpus - workers if idle is None else min(cpus - workers, round(idle))
    torch.set_num_threads(max(1, free))
    with suppress(RuntimeError):  # already set, or inter-op work has started: torch refuses a second size
        torch.set_num_interop_threads(1)
    return torch.get_num_threads()


@dataclass(frozen=True)
class CpuInfo:
    """What the CPU computes natively: ``bf16`` as oneDNN reports it, ``int8_vnni`` and ``amx`` from the ISA flags."""

    name: str
    isa: str
    bf16: bool
    int8_vnni: bool
    amx: bool = False

    @property
    def kind(self) -> str:
        """The CPU kind in words, as the bench results and ``fastmtl info`` name it: ``AVX2``, ``AVX-512 + VNNI +
        bf16``, ``AMX``, ..."""
        if self.amx:
            return "AMX"
        features = [self.isa.replace("AVX512", "AVX-512")]
        features += ["VNNI"] * self.int8_vnni + ["bf16"] * self.bf16
        return " + ".join(features)

    @property
    def key(self) -> str:
        return f"{self.name}|{self.isa}|bf16={self.bf16}|vnni={self.int8_vnni}" + ("|amx" if self.amx else "")


# The CPU kinds fastmtl's paths and recipes depend on, by the name $FASTMTL_CPU takes to simulate one (tests, and a
# user who wants the recipe of another machine). A simulated kind changes the choices, not what the hardware does:
# bf16 on a CPU without it runs emulated (slowly), 8-bit int8 weights without VNNI may saturate.
SIMULATED_CPUS = {
    "avx2": CpuInfo("simulated AVX2 CPU", "AVX2", bf16=False, int8_vnni=False),
    "avx512-vnni-bf16": CpuInfo("simulated AVX-512 CPU", "AVX512", bf16=True, int8_vnni=True),
    "amx": CpuInfo("simulated AMX CPU", "AVX512", bf16=True, int8_vnni=True, amx=True),
}
CPU_ENV = "FASTMTL_CPU"


def cpu_info() -> CpuInfo:
    """Detects the CPU's native bf16, int8 dot-product (VNNI) and AMX support (not guessed from the vendor), or the
    simulated kind that ``$FASTMTL_CPU`` names (:data:`SIMULATED_CPUS`; subprocesses inherit it).

    Raises:
        ValueError: ``$FASTMTL_CPU`` names no kind.
    """
    simulated = os.environ.get(CPU_ENV, "").strip()
    if simulated:
        if simulated not in SIMULATED_CPUS:
            raise ValueError(f"{CPU_ENV}={simulated!r}: expected one of {', '.join(SIMULATED_CPUS)} (or unset: this "
                             "CPU as detected)")  # fmt: skip
        return SIMULATED_CPUS[simulated]
    return _detected_cpu()


@lru_cache(maxsize=1)
def _detected_cpu() -> CpuInfo:
    name, flags = platform.processor() or platform.machine(), set()
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    bf16 = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    vnni = bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    amx = bool(flags & {"amx_int8", "amx_bf16"})
    return CpuInfo(name, torch.backends.cpu.get_cpu_capability(), bf16, vnni, amx)
