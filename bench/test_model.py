"""Whole-model throughput: inference images/s and training steps/s of resformer_mtl per provider, next to peers.

Groups ``infer-<img>px-b<batch>`` and ``train-<img>px-b<batch>``; the providers and the CPU subset are described
in :mod:`bench.cases`. A training step is forward + MTL loss + backward + AdamW step. ``extra_info`` holds ms,
images/s, TFLOP/s (FLOPs counted once per model and size on the meta device), peak CUDA memory and GPU telemetry;
speedups vs eager and vs compiled are added at the end of the session.

Run: ``pytest bench/test_model.py --benchmark-json=out.json`` then ``python -m bench.report out.json``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch
from torch import nn

import fastmtl
from bench import telemetry
from bench.cases import ModelCase, cases, cpu_skip_reason
from bench.record import record_group
from fastmtl.backend import kernel_backend, use_triton
from fastmtl.losses import MTLLoss
from fastmtl.output import MTLOutput

_MODES = {"test_infer": "infer", "test_train": "train"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    mode = _MODES.get(metafunc.function.__name__)
    if mode is None or "case" not in metafunc.fixturenames:
        return
    quick, suite = bool(metafunc.config.getoption("bench_quick")), bool(metafunc.config.getoption("bench_suite"))
    params = []
    for case in cases(mode, quick, suite):
        reason = cpu_skip_reason(case, quick, cpu_compile=True) or ""
        marks = [pytest.mark.gpu] if reason.startswith("needs CUDA") else []
        params.append(pytest.param(case, id=case.id, marks=marks))
    metafunc.parametrize("case", params)


class SmpMTL(nn.Module):
    """segmentation_models_pytorch UNet-ResNet34 with a class head, returning :class:`MTLOutput` (no weights)."""

    def __init__(self) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.net = smp.Unet("resnet34", encoder_weights=None, classes=1, aux_params=dict(classes=3))

    def forward(self, x: torch.Tensor) -> MTLOutput:
        seg, cls = self.net(x)
        return MTLOutput(seg, cls)


def provider_kernels(case: ModelCase, device: torch.device) -> str:
    """The kernel backend ``case``'s model is built with. Only the ``fastmtl`` provider takes the Triton kernels
    (on CUDA); every baseline (eager, autocast, compiled) and every peer is built with ``kernels="reference"``,
    so that no baseline is timed with fastmtl's kernels inside it and each speedup measures the whole fast path."""
    if case.provider == "fastmtl":
        return "triton" if use_triton("auto", device.type == "cuda") else "reference"
    return "reference"


def build_model(case: ModelCase, device: torch.device) -> nn.Module:
    """``case``'s model (on the CPU, not yet moved) with the backend of :func:`provider_kernels`."""
    if case.model == "smp_unet_r34":
        pytest.importorskip("segmentation_models_pytorch", reason="segmentation-models-pytorch is not installed")
        return SmpMTL()
    with kernel_backend(provider_kernels(case, device)):
        return fastmtl.create_model(case.model, img_size=case.img_size)


def _skip_unless_runs(case: ModelCase, device: torch.device, quick: bool, cpu_compile: bool) -> None:
    if device.type == "cpu":
        reason = cpu_skip_reason(case, quick, cpu_compile)
        if reason:
            pytest.skip(reason)


def _autocast(case: ModelCase, device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if case.amp else contextlib.nullcontext()


def _inference_net(case: ModelCase, model: nn.Module, device: torch.device, cpu_compile: bool):
    """The module to time and facts about it for extra_info."""
    if case.provider == "fastmtl":
        from fastmtl.inference.optimize import optimize_for_inference

        on_gpu = device.type == "cuda"
        compile_mode = "default" if on_gpu or cpu_compile else False
        torch._dynamo.reset()
        net = optimize_for_inference(model, compile=compile_mode, kernels=provider_kernels(case, device), amp="auto")
        facts = {
            "fast_path": "bn_fold+channels_last" + ("+bf16" if on_gpu else "") + ("+compile" if compile_mode else ""),
        }
        return net, facts
    if case.provider.startswith("compile"):
        torch._dynamo.reset()  # fresh graphs per case: no recompile-limit fallbacks to eager across shapes
        mode = "max-autotune" if case.provider == "compile-max-autotune" else "default"
        return torch.compile(model, mode=mode), {"compile_mode": mode}
    return model, {}


@pytest.fixture
def setup_case(bench_device, bench_quick, bench_cpu_compile):
    def build(case: ModelCase) -> tuple[nn.Module, torch.Tensor, dict[str, Any]]:
        _skip_unless_runs(case, bench_device, bench_quick, bench_cpu_compile)
        torch.manual_seed(0)
        model = build_model(case, bench_device).to(bench_device)
        x = torch.randn(case.batch, 3, case.img_size, case.img_size, device=bench_device)  # (B, 3, H, W)
        facts = {
            "model": case.model,
            "img_size": case.img_size,
            "batch": case.batch,
            "dtype": "bf16" if case.amp or (case.provider == "fastmtl" and bench_device.type == "cuda") else "fp32",
        }
        facts["flops"] = lambda: (
            case.batch * telemetry.model_flops(case.model, model, case.img_size, train=case.mode == "train")
        )
        return model, x, facts

    return build


def test_infer(case: ModelCase, setup_case, measure, bench_device, bench_cpu_compile, request) -> None:
    record_group(request.node, case.group)
    model, x, facts = setup_case(case)
    net, more = _inference_net(case, model.eval(), bench_device, bench_cpu_compile)
    ctx = _autocast(case, bench_device)
    graphs = case.provider == "compile-max-autotune" and bench_device.type == "cuda"

    def forward() -> Any:
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.inference_mode(), ctx:
            return net(x)

    compiled = "compile_mode" in more or "compile" in more.get("fast_path", "")
    measure(forward, group=case.group, provider=case.provider, items=case.batch, compiled=compiled, mode="infer",
            module=net, **facts, **more)  # fmt: skip


def _train_parts(case: ModelCase, model: nn.Module, x: torch.Tensor, device: torch.device):
    """(module to call, input) for the training providers; fastmtl = Triton + channels_last + compile (GPU)."""
    if case.provider == "fastmtl":
        fastmtl.set_kernel_backend(model, provider_kernels(case, device))
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if case.compiled:
        torch._dynamo.reset()
        return torch.compile(model), x
    return model, x


def test_train(case: ModelCase, setup_case, measure, bench_device, request) -> None:
    record_group(request.node, case.group)
    model, x, facts = setup_case(case)
    model.train()
    net, x = _train_parts(case, model, x, bench_device)
    amp = case.amp or (case.provider == "fastmtl" and bench_device.type == "cuda")
    ctx = torch.autocast(bench_device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=3e-5)
    loss_fn = MTLLoss(seg_classes=1, alpha=0.25).to(bench_device)
    gen = torch.Generator(device=bench_device).manual_seed(0)
    mask = torch.randint(0, 2, (case.batch, case.img_size, case.img_size), generator=gen, device=bench_device).float()
    labels = torch.randint(0, 2, (case.batch, 3), generator=gen, device=bench_device).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with ctx:
            out = net(x)
        loss_fn(out, mask, labels)["loss"].backward()
        optimizer.step()

    measure(step, group=case.group, provider=case.provider, items=case.batch, compiled=case.compiled, mode="train",
            module=model, **facts)  # fmt: skip
