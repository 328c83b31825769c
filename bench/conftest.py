"""Shared fixtures and hooks of the benchmark suite (``pytest bench/``).

- Options: ``--bench-quick`` (env ``FASTMTL_BENCH_QUICK=1``) shrinks the shapes to a smoke set (img 32/64, batch
  1) for CI, usually with ``--benchmark-disable``; ``--bench-full`` (``FASTMTL_BENCH_FULL=1``) runs the CPU
  precision group's full sweep (bench/test_cpu_precision.py); ``--bench-cpu-compile`` (``FASTMTL_BENCH_CPU_COMPILE=1``)
  includes ``torch.compile`` providers on CPU; ``--bench-checkpoint`` / ``--bench-data`` / ``--bench-split``
  (``FASTMTL_BENCH_CHECKPOINT`` / ``_DATA`` / ``_SPLIT``) feed the accuracy group.
- Options used by ``python -m bench.gpu_suite``: ``--bench-suite`` (``FASTMTL_BENCH_SUITE=1``) keeps only the cases
  its goals are judged on, most important first; ``--bench-budget-s`` (``FASTMTL_BENCH_BUDGET_S``) sets the seconds
  of timed rounds per case (time-boxing itself is the ``bench.deadline`` plugin's);
  ``--bench-compile-mode`` (``FASTMTL_BENCH_COMPILE_MODE``, default ``max-autotune``) is the mode of the
  "max-autotune" baselines, lighter where autotuning does not fit the budget.
- ``measure`` fixture: times one callable with ``benchmark.pedantic`` (CUDA synchronised inside the timed
  region, an untimed first call for compile/autotune, warm-up rounds, rounds sized to a time budget) and fills
  ``benchmark.extra_info`` with provider, ms, images/s, TFLOP/s, peak CUDA memory and NVML clocks/power.
- Hooks: device/library telemetry into the JSON's ``machine_info["fastmtl"]``; at the end of the session every
  benchmark gets ``speedup_vs_eager`` / ``speedup_vs_compiled`` from the other providers of its group (see
  :func:`bench.benchmarks.add_speedups`: the provider comes from ``extra_info["provider"]`` or the ``provider``
  parameter; "eager"/"torch"/"reference" are the eager baseline, "compile"/"compiled" the compiled one).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

from bench import fallbacks, telemetry
from bench.benchmarks import add_speedups
from bench.cases import env_flag
from bench.record import record_benchmark, record_group

# Timed-round budget per case: (seconds of timed rounds, min rounds, max rounds, warm-up rounds).
# (seconds per case, fewest rounds, most rounds, warm-up rounds). At least 3 CPU rounds, so that the median is not
# set by one round that another job on the shared cores slowed down.
_BUDGETS = {"cuda": (2.0, 10, 200, 3), "cpu": (15.0, 3, 10, 0), "quick": (1.0, 1, 3, 0)}
_SESSION: dict[str, Any] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastmtl-bench", "fastmtl benchmark suite")
    group.addoption("--bench-quick", action="store_true", default=env_flag("FASTMTL_BENCH_QUICK"),
                    help="tiny smoke shapes (img 32/64, batch 1); env FASTMTL_BENCH_QUICK=1")  # fmt: skip
    group.addoption("--bench-full", action="store_true", default=env_flag("FASTMTL_BENCH_FULL"),
                    help="the full CPU precision sweep: batch 1 too, torch's compiled paths, 200 accuracy images "
                         "(default: 224 px batch 8, the paths that compile nothing per process)")  # fmt: skip
    group.addoption("--bench-cpu-compile", action="store_true", default=env_flag("FASTMTL_BENCH_CPU_COMPILE"),
                    help="run torch.compile providers on CPU too (minutes each)")  # fmt: skip
    group.addoption("--bench-checkpoint", default=os.environ.get("FASTMTL_BENCH_CHECKPOINT"),
                    help="checkpoint (.safetensors) for the accuracy group")  # fmt: skip
    group.addoption("--bench-data", default=os.environ.get("FASTMTL_BENCH_DATA"),
                    help="dataset folder for the checkpoint evaluation")  # fmt: skip
    group.addoption("--bench-split", default=os.environ.get("FASTMTL_BENCH_SPLIT", "test"),
                    help="dataset split for the checkpoint evaluation (default test)")  # fmt: skip
    group.addoption("--bench-suite", action="store_true", default=env_flag("FASTMTL_BENCH_SUITE"),
                    help="only the cases the GPU suite's goals use, most important first")  # fmt: skip
    group.addoption("--bench-budget-s", type=float, default=float(os.environ.get("FASTMTL_BENCH_BUDGET_S", 0)),
                    help="seconds of timed rounds per case (0 = the device's default)")  # fmt: skip
    group.addoption("--bench-compile-mode", default=os.environ.get("FASTMTL_BENCH_COMPILE_MODE", "max-autotune"),
                    help="torch.compile mode of the max-autotune baselines")  # fmt: skip


def pytest_sessionstart(session: pytest.Session) -> None:
    _SESSION["start"] = time.perf_counter()
    if hasattr(os, "getloadavg"):
        _SESSION["load_avg_start"] = [round(x, 2) for x in os.getloadavg()]


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    info = telemetry.machine_info()
    machine_info["fastmtl"] = {
        **info,
        "device_slug": telemetry.device_slug(info),
        "bench_quick": bool(config.getoption("bench_quick")),
        "load_avg_start": _SESSION.get("load_avg_start"),
        "compile_mode": config.getoption("bench_compile_mode"),
    }


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list, output_json: dict[str, Any]) -> None:
    add_speedups(output_json["benchmarks"])
    output_json.setdefault("machine_info", {}).setdefault("fastmtl", {}).update(
        wall_s=round(time.perf_counter() - _SESSION.get("start", time.perf_counter()), 1),
        load_avg_end=[round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        kernel_configs=telemetry.kernel_configs(),
    )


@pytest.fixture(scope="session")
def bench_device() -> torch.device:
    """CUDA when present (the main use), else CPU."""
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        return torch.device("cuda")
    return torch.device("cpu")


@pytest.fixture(scope="session")
def bench_quick(pytestconfig: pytest.Config) -> bool:
    return bool(pytestconfig.getoption("bench_quick"))


@pytest.fixture(scope="session")
def bench_suite(pytestconfig: pytest.Config) -> bool:
    return bool(pytestconfig.getoption("bench_suite"))


@pytest.fixture(scope="session")
def bench_compile_mode(pytestconfig: pytest.Config) -> str:
    return pytestconfig.getoption("bench_compile_mode")


@pytest.fixture(scope="session")
def bench_cpu_compile(pytestconfig: pytest.Config) -> bool:
    return bool(pytestconfig.getoption("bench_cpu_compile"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.when == "call":
        item.stash[_CALL_S] = report.duration
    return report


_CALL_S = pytest.StashKey[float]()
_NOTHING_BUILT_S = 0.05  # a case that ended this fast (skipped at once) built nothing to free


@pytest.fixture(autouse=True)
def _free_memory(request: pytest.FixtureRequest):
    """Drops the previous case's models, graphs and CUDA cache so cases do not see each other's memory (not after a
    case skipped at once: a full collection costs ~0.4 s, and most of a CPU run's ~500 cases are CUDA-only skips)."""
    yield
    if request.node.stash.get(_CALL_S, 1.0) < _NOTHING_BUILT_S:
        return
    torch._dynamo.reset()  # compiled graphs may keep the last case's weights and workspaces alive
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _first_call(fn: Callable[[], Any], what: str) -> float:
    """Runs ``fn`` once untimed (compile, autotune, allocator warm-up); skips the test on CUDA OOM."""
    start = time.perf_counter()
    try:
        fn()
    except torch.cuda.OutOfMemoryError:
        pytest.skip(f"{what}: CUDA out of memory")
    return time.perf_counter() - start


@pytest.fixture
def measure(benchmark, bench_device: torch.device, bench_quick: bool, pytestconfig: pytest.Config, request):
    """``measure(fn, *, group, provider, items=None, flops=None, compiled=False, once=False, module=None, **extra)``
    times ``fn``.

    ``items`` is the number of images per call (gives images/s), ``flops`` the FLOPs per call or a function that
    counts them, called only when timing is on (gives TFLOP/s);
    ``compiled`` adds an untimed call after the first so the round estimate excludes compilation;
    ``once`` times a single call with no untimed first call (long, stateful runs such as a training budget) and
    returns its result; ``module`` is the timed model, whose kernel backend is recorded (``extra_info["kernels"]``,
    else the ``kernels`` the caller passes) with the fallbacks seen while timing (:mod:`bench.fallbacks`). Each
    finished case is also written to the ``bench.record`` file at once.
    """

    def run(fn, *, group: str, provider: str, items=None, flops=None, compiled=False, once=False, module=None,
            **extra) -> Any:  # fmt: skip
        benchmark.group = group
        record_group(request.node, group)
        info = benchmark.extra_info
        kernels = extra.pop("kernels", None) or fallbacks.kernel_backend_of(module, bench_device)
        info.update(provider=provider, device=str(bench_device), kernels=kernels, **extra)
        before = fallbacks.snapshot()
        timed = telemetry.synchronized(fn, bench_device)
        if once or benchmark.disabled:  # one plain call: a long run, or smoke mode (no statistics)
            box = {}
            start = time.perf_counter()
            benchmark.pedantic(lambda: box.setdefault("result", timed()), rounds=1, warmup_rounds=0, iterations=1)
            info["wall_s"] = time.perf_counter() - start
            _finish(info, module, kernels, before)
            return box.get("result")
        what = f"{group} {provider}"
        info["first_call_s"] = round(_first_call(timed, what), 3)
        estimate = _first_call(timed, what) if compiled else info["first_call_s"]
        budget, lo, hi, warmup = _BUDGETS["quick" if bench_quick else bench_device.type]
        budget = pytestconfig.getoption("bench_budget_s") or budget
        rounds = int(min(hi, max(lo, budget // max(estimate, 1e-6))))
        telemetry.reset_peak_memory(bench_device)
        cpu_start = time.process_time()
        benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup, iterations=1)
        # Process CPU time per call (all threads): on a shared CPU it moves less than the wall clock does.
        cpu_s = (time.process_time() - cpu_start) / (rounds + warmup)
        median = benchmark.stats.stats.median
        info.update(ms=median * 1e3, rounds=rounds, cpu_s_per_call=cpu_s)
        if items:
            info["images_per_s"] = items / median
            if bench_device.type == "cpu":
                info["images_per_cpu_s"] = items / max(cpu_s, 1e-9)
        flops = flops() if callable(flops) else flops
        if flops:
            info.update(gflops_per_call=flops / 1e9, tflops=flops / median / 1e12)
        peak = telemetry.peak_memory_mib(bench_device)
        if peak is not None:
            info["peak_mem_mib"] = peak
        info.update({f"gpu_{k}": v for k, v in telemetry.gpu_snapshot().items()})
        _finish(info, module, kernels, before)
        return None

    def _finish(info: dict[str, Any], module, kernels: str, before: dict[str, int]) -> None:
        after = fallbacks.kernel_backend_of(module, bench_device) if module is not None else kernels
        info["fallbacks"] = fallbacks.since(before, kernels, after)
        if benchmark.stats is not None:
            record_benchmark(request.node, benchmark.stats.as_dict(include_data=False))

    return run
