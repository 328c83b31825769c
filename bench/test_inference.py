"""Inference throughput: eager fp32 against :func:`fastmtl.inference.optimize_for_inference` (CPU and GPU).

As a pytest-benchmark group (one timed callable per provider, images/s and speedup vs eager in ``extra_info``)::

    pytest bench/test_inference.py --benchmark-group-by=param:shape

As a script that interleaves the providers round by round, so a busy machine slows them alike, and prints
images/s (wall clock), images per CPU-second (process time; robust when other jobs share the cores) and the
ratio to eager::

    python bench/test_inference.py --img-size 64 --batch 8 --rounds 5 [--providers eager fold_cl ...]

Providers (CPU): ``eager`` (the model as built, fp32 NCHW), ``fold`` (BN folded), ``fold_cl`` (+ channels_last),
``fold_cl_compile`` (+ ``torch.compile``). GPU: ``eager`` and ``eager_bf16`` (autocast), ``optimized`` (Triton
kernels, BN folded, channels_last, bf16), ``optimized_compile`` (+ max-autotune), ``optimized_graphs``
(+ compile with CUDA graphs). ``--bench-quick`` (when bench/conftest.py defines it) shrinks the shapes.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

import fastmtl
from fastmtl.inference import optimize_for_inference

CPU_PROVIDERS = ("eager", "fold", "fold_cl", "fold_cl_compile")
GPU_PROVIDERS = ("eager", "eager_bf16", "optimized", "optimized_compile", "optimized_graphs")
_COMPILED = {"fold_cl_compile", "optimized_compile", "optimized_graphs"}


@dataclass(frozen=True)
class Case:
    """One benchmark shape."""

    model: str
    img_size: int
    batch: int
    device: str

    @property
    def name(self) -> str:
        return f"{self.model}-{self.img_size}px-b{self.batch}-{self.device}"


def build(provider: str, model: torch.nn.Module) -> Callable[[torch.Tensor], object]:
    """The callable a provider times; ``model`` is the eager fp32 model on its device (left unchanged)."""
    if provider == "eager":
        return model
    if provider == "eager_bf16":
        return lambda x: _autocast_call(model, x)
    options = {
        "fold": dict(channels_last=False, kernels="reference", amp=False),
        "fold_cl": dict(kernels="reference", amp=False),
        "fold_cl_compile": dict(kernels="reference", amp=False, compile="default"),
        "optimized": dict(),
        "optimized_compile": dict(compile="max-autotune"),
        "optimized_graphs": dict(compile="default", cuda_graphs=True),
    }
    if provider not in options:
        raise ValueError(f"unknown provider {provider!r}; expected one of {CPU_PROVIDERS + GPU_PROVIDERS}")
    return optimize_for_inference(model, **options[provider])


def _autocast_call(model: torch.nn.Module, x: torch.Tensor) -> object:
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        return model(x)


@functools.cache
def make_model(case: Case) -> torch.nn.Module:
    """The eager model of a case, built once (providers deep-copy it, so it is never modified)."""
    torch.manual_seed(0)
    return fastmtl.create_model(case.model, img_size=case.img_size, kernels="reference").to(case.device).eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable, x: torch.Tensor) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one synchronised call."""
    _sync(str(x.device))
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        fn(x)
    _sync(str(x.device))
    return time.perf_counter() - wall, time.process_time() - cpu


def compare(case: Case, providers: tuple[str, ...], rounds: int = 5, warmup: int = 2) -> dict[str, dict[str, float]]:
    """Median images/s (wall and per CPU-second) of each provider, measured in interleaved rounds."""
    model = make_model(case)
    x = torch.randn(case.batch, 3, case.img_size, case.img_size, device=case.device)
    fns = {p: build(p, model) for p in providers}
    for fn in fns.values():
        for _ in range(warmup):  # compile, autotune, CUDA-graph capture
            time_call(fn, x)
    samples: dict[str, list[tuple[float, float]]] = {p: [] for p in providers}
    for _ in range(rounds):
        for p, fn in fns.items():
            samples[p].append(time_call(fn, x))
    result = {}
    for p, s in samples.items():
        wall, cpu = statistics.median(w for w, _ in s), statistics.median(c for _, c in s)
        result[p] = {"images_per_s": case.batch / wall, "images_per_cpu_s": case.batch / max(cpu, 1e-9)}
    return result


# ----------------------------------------------------------------------------------------------- pytest-benchmark
def _cases(device: str, quick: bool) -> list[Case]:
    if quick:
        return [Case("resformer_mtl", 32, 1, device)]
    batches = (8, 64) if device == "cuda" else (8,)
    sizes = (224,) if device == "cuda" else (64,)  # CPU at 224: bench/test_model.py (eager vs fastmtl)
    return [Case("resformer_mtl", s, b, device) for s in sizes for b in batches]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Shapes per device; ``--bench-quick`` (defined by bench/conftest.py, if present) picks the tiny one."""
    if "case" in metafunc.fixturenames:
        quick = bool(metafunc.config.getoption("--bench-quick", default=False))
        cases = _cases(metafunc.definition.get_closest_marker("gpu") and "cuda" or "cpu", quick)
        metafunc.parametrize("case", cases, ids=[c.name for c in cases])


_EAGER_RATE: dict[Case, float] = {}


def _run(benchmark, case: Case, provider: str, cpu_compile: bool = False) -> None:
    if case.device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (none on this machine)")
    quick = case in _cases(case.device, True)
    if quick and provider in _COMPILED:
        pytest.skip("compiled providers take minutes to compile; not part of the quick smoke run")
    if case.device == "cpu" and provider in _COMPILED and not cpu_compile:
        pytest.skip("torch.compile on CPU takes minutes per shape here; pass --bench-cpu-compile to include it")
    benchmark.group = f"inference-{case.name}"
    model = make_model(case)
    x = torch.randn(case.batch, 3, case.img_size, case.img_size, device=case.device)
    fn = build(provider, model)
    for _ in range(2):
        time_call(fn, x)
    if case not in _EAGER_RATE:
        _EAGER_RATE[case] = case.batch / min(time_call(model, x)[0] for _ in range(2))
    benchmark.pedantic(time_call, args=(fn, x), rounds=3 if quick else 5, iterations=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        rate = case.batch / stats.stats.median
        benchmark.extra_info.update(images_per_s=rate, speedup_vs_eager=rate / _EAGER_RATE[case])


@pytest.mark.parametrize("provider", CPU_PROVIDERS)
def test_inference_cpu(benchmark, case: Case, provider: str, bench_cpu_compile: bool) -> None:
    _run(benchmark, case, provider, bench_cpu_compile)


@pytest.mark.gpu
@pytest.mark.parametrize("provider", GPU_PROVIDERS)
def test_inference_gpu(benchmark, case: Case, provider: str) -> None:
    _run(benchmark, case, provider)


# ----------------------------------------------------------------------------------------------- script
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resformer_mtl")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--providers", nargs="+", help="default: every provider of the device")
    args = parser.parse_args(argv)
    providers = tuple(args.providers or (GPU_PROVIDERS if args.device.startswith("cuda") else CPU_PROVIDERS))
    case = Case(args.model, args.img_size, args.batch, args.device)
    print(f"{case.name}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    result = compare(case, providers, rounds=args.rounds)
    base = result.get("eager")
    for p, r in result.items():
        ratio = (
            ""
            if base is None
            else (
                f"  x{r['images_per_s'] / base['images_per_s']:.2f} wall, "
                f"x{r['images_per_cpu_s'] / base['images_per_cpu_s']:.2f} per CPU-s vs eager"
            )
        )
        print(f"{p:>20}: {r['images_per_s']:8.2f} images/s  {r['images_per_cpu_s']:8.2f} images/CPU-s{ratio}")


if __name__ == "__main__":
    main()
