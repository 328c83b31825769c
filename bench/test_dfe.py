"""DFE benchmarks: Triton kernels vs eager (cuDNN) vs ``torch.compile(mode="max-autotune")`` of the reference.

One group per DFE level and input size (``bench.shapes.dfe_shapes()``), batches 1/8/64, forward (eval) and
forward+backward (training), fp16. Each test times one synchronised callable; ``extra_info`` carries the median
ms, the effective TFLOP/s (dense conv FLOPs of SPEC.md §7, dead taps included, backward = 2x forward) and, on the
Triton rows, the speedups over the two baselines measured earlier in the same session.
Run: ``pytest bench/test_dfe.py --benchmark-only`` on a CUDA machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from bench.shapes import DILATIONS, GPU_BATCHES, DFEShape, dfe_shapes
from fastmtl.layers.dfe import DFE

if not torch.cuda.is_available():
    pytest.skip("DFE benchmarks time CUDA kernels; no CUDA device here", allow_module_level=True)

PROVIDERS = ("eager", "compiled", "triton")  # triton last: its rows report speedups over the other two
DTYPE = torch.float16


@dataclass(frozen=True)
class Case:
    shape: DFEShape
    batch: int
    backward: bool

    @property
    def name(self) -> str:
        return f"{self.shape.name}-b{self.batch}-{'fwd+bwd' if self.backward else 'fwd'}"

    def flops(self) -> float:
        """Dense multiply-adds x 2 of the convolutions (branches, merge, shortcut, 7x7 gate)."""
        c, pix = self.shape.channels, self.batch * self.shape.side**2
        macs = pix * (c * c * (1 + 9 * len(DILATIONS)) + 9 * (1 + len(DILATIONS)) * c * c + c * c + 2 * 49)
        return 2.0 * macs * (3 if self.backward else 1)


CASES = [Case(s, b, bw) for s in dfe_shapes() for b in GPU_BATCHES for bw in (False, True)]
_COMPILED: dict[tuple, torch.nn.Module] = {}
_MEDIAN_MS: dict[tuple[str, str], float] = {}


def _module(case: Case, provider: str) -> torch.nn.Module:
    torch.manual_seed(0)
    kernels = "triton" if provider == "triton" else "reference"
    module = DFE(case.shape.channels, DILATIONS, kernels=kernels).cuda().to(DTYPE).train(case.backward)
    if provider != "compiled":
        return module
    key = (case.shape, case.backward)  # compile once per level and mode; batches reuse it (recompiling as needed)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(module, mode="max-autotune")
    return _COMPILED[key]


def _step(module: torch.nn.Module, case: Case):
    x = torch.randn(case.batch, case.shape.channels, case.shape.side, case.shape.side, device="cuda", dtype=DTYPE)
    if case.backward:
        x.requires_grad_()

    def run():
        if case.backward:
            module(x).float().sum().backward()
        else:
            with torch.no_grad():
                module(x)
        torch.cuda.synchronize()

    return run


@pytest.mark.gpu
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_dfe(benchmark, case: Case, provider: str):
    benchmark.group = f"dfe-{case.shape.name}"
    run = _step(_module(case, provider), case)
    benchmark.pedantic(run, warmup_rounds=3, rounds=20, iterations=1)
    ms = benchmark.stats.stats.median * 1e3
    _MEDIAN_MS[(case.name, provider)] = ms
    info = {"provider": provider, "batch": case.batch, "mode": "fwd+bwd" if case.backward else "fwd", "ms": ms,
            "tflops": case.flops() / (ms * 1e-3) / 1e12, "dtype": str(DTYPE).split(".")[-1]}  # fmt: skip
    if provider == "triton":
        for base in ("eager", "compiled"):
            if (case.name, base) in _MEDIAN_MS:
                info[f"speedup_vs_{base}"] = _MEDIAN_MS[(case.name, base)] / ms
    benchmark.extra_info.update(info)
