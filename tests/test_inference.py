"""optimize_for_inference: BN folding, channels_last, autocast and compile give the eager outputs (CPU)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import fastmtl
from fastmtl.backend import kernel_layers
from fastmtl.checkpoint.store import model_config
from fastmtl.inference.optimize import count_batchnorms, fold_batchnorms, fold_conv_bn, optimize_for_inference

# BatchNorm2d left after folding: only the classification head's BN -> ReLU -> pool branches, which no conv feeds.
BN_AFTER_FOLD = {"resformer_mtl": 2, "unet_resnet34_mtl": 1}


def _randomise_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so folding has something to get wrong."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
    return model


@functools.cache
def _model(name: str, img_size: int, dfe: str | None = None) -> nn.Module:
    """Built once per module; the tests never modify it (one of them checks exactly that)."""
    torch.manual_seed(0)
    kwargs = {} if dfe is None else {"dfe": dfe}
    return _randomise_bn(fastmtl.create_model(name, img_size=img_size, kernels="auto", **kwargs)).eval()


def _assert_outputs_close(out, ref, tol: float = 1e-4) -> None:
    assert out.seg_logits.dtype == torch.float32 and out.cls_logits.dtype == torch.float32
    torch.testing.assert_close(out.seg_logits, ref.seg_logits, rtol=tol, atol=tol)
    torch.testing.assert_close(out.cls_logits, ref.cls_logits, rtol=tol, atol=tol)


@pytest.mark.parametrize("img_size", [32, 64])
@pytest.mark.parametrize("name", ["resformer_mtl", "unet_resnet34_mtl"])
def test_folded_channels_last_matches_eager(name: str, img_size: int) -> None:
    model = _model(name, img_size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize_for_inference(model)
    x = torch.randn(2, 3, img_size, img_size)
    with torch.inference_mode():
        _assert_outputs_close(fast(x), model(x))
    assert count_batchnorms(model) > count_batchnorms(fast) == BN_AFTER_FOLD[name]
    # The caller's model is untouched: same weights, same BN modules, same backend, same mode.
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert {m.kernels for m in kernel_layers(model)} <= {"auto"}
    assert all(p.is_contiguous() for p in model.parameters()) and not model.training


@pytest.mark.slow
def test_triton_backend_folds_dfe_convbn_too() -> None:
    """The DFE ConvBNs are folded on every backend: the Triton path reads folded ConvBNs through the same fold
    (CPU tensors dispatch to the reference)."""
    model = _model("resformer_mtl", 32)
    fast = optimize_for_inference(model, kernels="triton", channels_last=False)
    assert count_batchnorms(fast) == BN_AFTER_FOLD["resformer_mtl"]
    assert {m.kernels for m in kernel_layers(fast)} == {"triton"} == {model_config(fast).kernels}
    x = torch.randn(1, 3, 32, 32)  # one image: under the interpreter every kernel launch is slow
    with torch.inference_mode():
        _assert_outputs_close(fast(x), model(x))


def test_reference_backend_sets_every_module() -> None:
    fast = optimize_for_inference(_model("resformer_mtl", 32), kernels="reference")
    kernels = {type(m).__name__: m.kernels for m in kernel_layers(fast)}
    assert kernels == {"DFE": "reference", "WindowAttention": "reference"}


def test_no_fold_keeps_every_bn_and_three_branch_dfe_folds() -> None:
    model = _model("resformer_mtl", 32, dfe="three")
    assert count_batchnorms(optimize_for_inference(model, fold_bn=False)) == count_batchnorms(model)
    fast = optimize_for_inference(model, channels_last=False)
    assert count_batchnorms(fast) == BN_AFTER_FOLD["resformer_mtl"]
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        _assert_outputs_close(fast(x), model(x))


def test_fold_conv_bn_with_bias_and_groups() -> None:
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2, bias=True), nn.BatchNorm2d(6)
    _randomise_bn(bn).eval()
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        ref = bn(conv(x))
        fold_conv_bn(conv, bn)
        torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-5)


def test_fold_refuses_training_bn() -> None:
    with pytest.raises(ValueError, match="eval-mode"):
        fold_conv_bn(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2).train())
    block = fastmtl.create_model("unet_resnet34_mtl", img_size=32).train()
    assert fold_batchnorms(block) == 0  # training-mode BNs are left alone


def test_bf16_autocast_on_cpu() -> None:
    model = _model("unet_resnet34_mtl", 32)
    fast = optimize_for_inference(model, amp="bf16")
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        out, ref = fast(x), model(x)
    # bf16 row of the tolerance table (STYLE.md): the logits go through ~40 bf16 convolutions.
    _assert_outputs_close(out, ref, tol=5e-2)


def test_result_exposes_config() -> None:
    model = _model("unet_resnet34_mtl", 32)
    assert model_config(optimize_for_inference(model)) == model.config


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cuda_graphs": True}, "cuda_graphs"),
        ({"compile": "fast"}, "compile must be"),
        ({"amp": "int8"}, "is not valid"),
        ({"kernels": "cuda"}, "unknown kernel backend"),
    ],
)
def test_invalid_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        optimize_for_inference(nn.Conv2d(1, 1, 1), **kwargs)


@pytest.mark.slow
def test_compiled_matches_eager() -> None:
    model = _model("unet_resnet34_mtl", 32)
    fast = optimize_for_inference(model, compile="default")
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        _assert_outputs_close(fast(x), model(x))
