"""The model contract (fastmtl.models.base.MTLModel): every registered model derives from it, checks its input
with one clear error, splits its forward, and keeps ``config.kernels`` equal to the backend its layers run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fastmtl
from fastmtl.backend import kernel_layers
from fastmtl.checkpoint.store import model_config
from fastmtl.models.base import MTLModel
from fastmtl.models.launches import KernelShapes
from fastmtl.registry import create_model

LIBRARY_MODELS = [n for n in fastmtl.list_models() if not n.endswith("_test")]


@pytest.fixture(scope="module", params=LIBRARY_MODELS)
def model(request) -> MTLModel:
    return create_model(request.param, img_size=32).eval()


def test_every_registered_model_keeps_the_contract(model):
    x = torch.randn(1, 3, 32, 32)
    assert isinstance(model, MTLModel) and model.config.name in LIBRARY_MODELS
    with torch.inference_mode():
        feats = model.forward_features(x)
        split, whole = model.forward_head(feats), model(x)
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512]
    for a, b in zip(split, whole, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: np.zeros((1, 3, 32, 32), np.float32), TypeError, r"float torch.Tensor \(B, 3, H, W\); got a "
                                                                  r"numpy.ndarray \(torch.from_numpy"),
        (lambda: [[0.0]], TypeError, "got a list"),
        (lambda: torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, "float tensor .*got torch.uint8"),
        (lambda: torch.zeros(1, 1, 32, 32), ValueError, r"C = in_chans = 3; got shape \(1, 1, 32, 32\)"),
        (lambda: torch.zeros(3, 32, 32), ValueError, r"got shape \(3, 32, 32\)"),
        (lambda: torch.zeros(1, 3, 40, 32), ValueError, "input size 40x32"),
    ],
)  # fmt: skip
def test_a_bad_input_gets_one_clear_error_naming_it(model, make, error, match):
    with pytest.raises(error, match=match):
        model(make())


def test_set_backend_switches_the_layers_and_the_config():
    model = create_model("resformer_mtl", img_size=32, kernels="auto")
    assert model.set_backend("reference") is model
    assert model.config.kernels == "reference" and {m.kernels for m in kernel_layers(model)} == {"reference"}
    assert model_config(model).kernels == "reference" and not model.uses_triton("cuda")
    fastmtl.set_kernel_backend(model, "triton")
    assert model.config.kernels == "triton" and {m.kernels for m in kernel_layers(model)} == {"triton"}
    assert model.uses_triton("cpu")
    with pytest.raises(ValueError, match="unknown kernel backend 'cuda'"):
        model.set_backend("cuda")
    assert model.config.kernels == "triton"  # a refused backend changes nothing


def test_a_model_without_kernel_layers_never_uses_triton():
    model = create_model("unet_resnet34_mtl", img_size=32, kernels="triton")
    assert not kernel_layers(model) and not model.uses_triton("cuda")


def test_an_entrypoint_that_breaks_the_contract_is_refused(monkeypatch):
    from fastmtl.models._registry import ENTRYPOINTS, OPTIONS

    def not_a_model_test(**kwargs) -> nn.Module:
        return nn.Conv2d(3, 1, 1)

    monkeypatch.setitem(ENTRYPOINTS, "not_a_model_test", not_a_model_test)  # registered for this test only
    monkeypatch.setitem(OPTIONS, "not_a_model_test", ("img_size",))
    with pytest.raises(TypeError, match="model 'not_a_model_test' built a Conv2d; a registered model derives from"):
        create_model("not_a_model_test")
    with pytest.raises(TypeError, match="is built from a fastmtl.ModelConfig, got dict"):
        fastmtl.models.ResFormerMTL({"name": "resformer_mtl"})


@pytest.mark.parametrize(("name", "img_size", "run_at"), [("resformer_mtl", 64, 128), ("resformer_mtl_nodfe", 32, 32)])
def test_the_published_launch_shapes_are_the_launches_the_model_makes(name, img_size, run_at):
    """What ``kernel_shapes`` says (and the kernel reports and benchmarks read) is what the layers see in a forward."""
    from fastmtl.layers.dfe import DFE
    from fastmtl.layers.swin import WindowAttention

    with torch.device("meta"):
        model = create_model(name, img_size=img_size, kernels="reference")
    seen: dict[str, list] = {"dfe": [], "attention": []}

    def record(module, args):
        x = args[0]
        if isinstance(module, DFE):
            seen["dfe"].append((x.shape[1], x.shape[-1], module.dilations))
        else:  # (B, H, W, C) tokens; each stage runs two blocks: record the first
            seen["attention"].append((x.shape[1], module.window, module.num_heads, x.shape[-1] // module.num_heads))

    for layer in kernel_layers(model):
        if isinstance(layer, (DFE, WindowAttention)):
            layer.register_forward_pre_hook(record)
    model(torch.empty(1, 3, run_at, run_at, device="meta"))
    shapes = model.kernel_shapes(run_at)
    assert [(s.channels, s.side, s.dilations) for s in shapes.dfe] == seen["dfe"]
    assert [(s.side, s.window, s.heads, s.head_dim) for s in shapes.window_attention] == seen["attention"][::2]
    assert all(s.img_size == run_at for s in (*shapes.dfe, *shapes.window_attention))
    assert bool(shapes.dfe) == (name == "resformer_mtl")
    assert create_model("resnet34_cls", img_size=32).kernel_shapes() == KernelShapes()


def test_the_kernel_tables_are_the_paper_models_launches():
    from fastmtl.models.launches import IMG_SIZES, dfe_shapes, window_attention_shapes

    with torch.device("meta"):
        paper = {s: create_model("resformer_mtl", img_size=s).kernel_shapes() for s in IMG_SIZES}
    assert dfe_shapes() == [shape for s in IMG_SIZES for shape in paper[s].dfe]
    assert window_attention_shapes() == [shape for s in IMG_SIZES for shape in paper[s].window_attention]
    assert [s.name for s in window_attention_shapes((224,))] == [
        "swin0-112px-w14-h2@224", "swin1-56px-w14-h4@224", "swin2-28px-w14-h8@224", "swin3-14px-w14-h16@224"
    ]  # fmt: skip
