"""DFE benchmarks: Triton kernels vs eager (cuDNN) vs ``torch.compile`` of the reference (``--bench-compile-mode``,
default max-autotune).

One group per DFE level, input size, batch and mode (the model's ``fastmtl.models.launches.dfe_shapes()``; batches
1/8/64, or 64 only with ``--bench-suite``), forward (eval) and forward+backward (training), bf16 as in the model's
fast paths. Each test times one synchronised callable with the shared ``measure`` fixture; ``extra_info`` carries
the median ms, the effective TFLOP/s (dense conv FLOPs of SPEC.md §7, dead taps included, backward = 2x forward);
the session adds ``speedup_vs_eager`` / ``speedup_vs_compiled`` to each row. On CPU only ``--bench-quick`` runs (one
tiny fp32 level; the Triton provider through the interpreter when ``TRITON_INTERPRET=1``), so that the benchmark's
code cannot rot where no GPU is at hand. Run: ``pytest bench/test_dfe.py`` on a CUDA machine."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from bench.cases import CPU_COMPILE_REASON
from bench.record import record_group
from bench.shapes import GPU_BATCHES, SUITE_BATCH
from fastmtl.layers.dfe import DFE
from fastmtl.models.launches import DFEShape, dfe_shapes

PROVIDERS = ("eager", "compiled", "triton")
QUICK_SHAPE = DFEShape(img_size=32, level=0, channels=16, side=8)


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
        rates = len(self.shape.dilations)
        macs = pix * (c * c * (1 + 9 * rates) + 9 * (1 + rates) * c * c + c * c + 2 * 49)
        return 2.0 * macs * (3 if self.backward else 1)


def cases(quick: bool, suite: bool) -> list[Case]:
    if quick:
        return [Case(QUICK_SHAPE, 2, bw) for bw in (False, True)]
    batches = (SUITE_BATCH,) if suite else GPU_BATCHES
    return [Case(s, b, bw) for s in dfe_shapes() for b in batches for bw in (False, True)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        found = cases(bool(metafunc.config.getoption("bench_quick")), bool(metafunc.config.getoption("bench_suite")))
        metafunc.parametrize("case", found, ids=[c.name for c in found])


def _skip_reason(device: torch.device, quick: bool, provider: str, cpu_compile: bool) -> str | None:
    if device.type == "cuda":
        return None
    if not quick:
        return "DFE benchmarks time CUDA kernels; on CPU only the --bench-quick smoke runs"
    if provider == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        return "the Triton provider needs CUDA or TRITON_INTERPRET=1"
    if provider == "compiled" and not cpu_compile:
        return CPU_COMPILE_REASON
    return None


@pytest.mark.parametrize("provider", PROVIDERS)
def test_dfe(case: Case, provider: str, measure, bench_device, bench_quick, bench_cpu_compile, bench_compile_mode,
             request):  # fmt: skip
    record_group(request.node, f"dfe-{case.name}")
    reason = _skip_reason(bench_device, bench_quick, provider, bench_cpu_compile)
    if reason:
        pytest.skip(reason)
    dtype = torch.bfloat16 if bench_device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    kernels = "triton" if provider == "triton" else "reference"
    module = DFE(case.shape.channels, case.shape.dilations, kernels=kernels)
    module = module.to(bench_device, dtype).train(case.backward)
    if provider == "compiled":
        torch._dynamo.reset()
        module = torch.compile(module, mode=bench_compile_mode)
    x = torch.randn(case.batch, case.shape.channels, case.shape.side, case.shape.side, device=bench_device)
    x = x.to(dtype).requires_grad_(case.backward)

    def run() -> None:
        if case.backward:
            module(x).float().sum().backward()
        else:
            with torch.no_grad():
                module(x)

    extra = {"compile_mode": bench_compile_mode} if provider == "compiled" else {}
    measure(run, group=f"dfe-{case.name}", provider=provider, items=case.batch, flops=case.flops(),
            compiled=provider == "compiled", module=module, mode="fwd+bwd" if case.backward else "fwd",
            batch=case.batch, dtype=str(dtype).split(".")[-1], level=case.shape.level, img_size=case.shape.img_size,
            **extra)  # fmt: skip
