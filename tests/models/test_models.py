"""Every registered model: output contract, errors, gradients, determinism, state_dict round trip."""

from __future__ import annotations

import pytest
import torch

import fastmtl
from fastmtl import MTLOutput
from fastmtl.backend import kernel_layers

SEG_ONLY = {"unet_resnet34"}
CLS_ONLY = {"resnet34_cls"}


# The library's models (other test modules register small ``*_test`` models of their own in the same registry).
LIBRARY_MODELS = [n for n in fastmtl.list_models() if not n.endswith("_test")]


@pytest.mark.parametrize("name", LIBRARY_MODELS)
@pytest.mark.parametrize("size", [32, 64])
def test_output_contract(name: str, size: int) -> None:
    model = fastmtl.create_model(name, img_size=size, seg_classes=2, cls_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert isinstance(out, MTLOutput)
    if name in CLS_ONLY:
        assert out.seg_logits is None
    else:
        assert out.seg_logits.shape == (2, 2, size, size) and out.seg_logits.dtype == torch.float32
    if name in SEG_ONLY:
        assert out.cls_logits is None
    else:
        assert out.cls_logits.shape == (2, 3) and out.cls_logits.dtype == torch.float32


def test_in_chans_and_defaults() -> None:
    model = fastmtl.create_model("resformer_mtl", img_size=32, in_chans=1).eval()
    out = model(torch.randn(1, 1, 32, 32))
    assert out.seg_logits.shape == (1, 1, 32, 32) and out.cls_logits.shape == (1, 3)
    assert model.config.dilations == (6, 12, 18) and model.config.window == 2


def test_every_head_choice_builds() -> None:
    x = torch.randn(1, 3, 32, 32)
    for head, classes in (("multiscale", 3), ("single", 3), ("none", None)):
        out = fastmtl.create_model("resformer_mtl", img_size=32, cls_head=head).eval()(x)
        assert out.seg_logits.shape == (1, 1, 32, 32)
        assert (out.cls_logits is None) if classes is None else out.cls_logits.shape == (1, classes)
    with pytest.raises(ValueError, match="cls_head"):
        fastmtl.create_model("resformer_mtl", cls_head="double")


def test_unknown_name_and_option_list_valid_ones() -> None:
    with pytest.raises(ValueError, match="registered models: .*resformer_mtl"):
        fastmtl.create_model("resformer")
    with pytest.raises(ValueError, match="no option.*'depth'.*valid options: img_size"):
        fastmtl.create_model("resformer_mtl", depth=3)
    with pytest.raises(ValueError, match="valid options"):
        fastmtl.create_model("unet_resnet34", dilations=(1, 2))
    with pytest.raises(ValueError, match="fusion"):
        fastmtl.ModelConfig(name="x", fusion="sideways")
    with pytest.raises(ValueError, match="multiple of 16"):
        fastmtl.create_model("resformer_mtl", img_size=100)


def test_input_size_error_is_clear() -> None:
    model = fastmtl.create_model("resformer_mtl", img_size=64)
    with pytest.raises(ValueError, match=r"input size 48x48 does not fit the window layout.*multiples of 64"):
        model(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="multiples of 16"):
        fastmtl.create_model("unet_resnet34", img_size=64)(torch.randn(1, 3, 40, 40))


def test_larger_input_than_nominal_uses_more_windows() -> None:
    model = fastmtl.create_model("resformer_mtl", img_size=32).eval()
    out = model(torch.randn(1, 3, 64, 96))
    assert out.seg_logits.shape == (1, 1, 64, 96)


@pytest.mark.parametrize("name", ["resformer_mtl", "resformer_mtl_serial", "unet_resnet34_mtl"])
def test_gradients_reach_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = fastmtl.create_model(name, img_size=64, seg_classes=4).train()
    out = model(torch.randn(2, 3, 64, 64))
    (out.seg_logits.square().mean() + out.cls_logits.square().mean()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        if ".branches." in pname and p.dim() == 4 and p.shape[-1] == 3:
            # At 64 input the DFE maps are 32..4 px: dilated taps off the centre can be all padding (SPEC §7),
            # so only the centre tap is guaranteed a gradient.
            assert p.grad[..., 1, 1].abs().sum() > 0, pname
        else:
            assert p.grad.abs().sum() > 0, pname


def test_seeded_construction_and_eval_are_deterministic() -> None:
    outs = []
    for _ in range(2):
        torch.manual_seed(1234)
        model = fastmtl.create_model("resformer_mtl", img_size=32).eval()
        with torch.no_grad():
            outs.append(model(torch.ones(1, 3, 32, 32)))
    torch.testing.assert_close(outs[0].seg_logits, outs[1].seg_logits, rtol=0, atol=0)
    torch.testing.assert_close(outs[0].cls_logits, outs[1].cls_logits, rtol=0, atol=0)


def test_seeded_training_step_is_deterministic() -> None:
    losses = []
    for _ in range(2):
        torch.manual_seed(7)
        model = fastmtl.create_model("resformer_mtl", img_size=32).train()
        out = model(torch.randn(2, 3, 32, 32))  # drop path draws from the same seeded stream
        losses.append((out.seg_logits.mean() + out.cls_logits.mean()).item())
    assert losses[0] == losses[1]


@pytest.mark.parametrize("name", ["resformer_mtl", "unet_resnet34_mtl"])
def test_state_dict_round_trip(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    a = fastmtl.create_model(name, img_size=32).eval()
    torch.save(a.state_dict(), tmp_path / "w.pt")
    torch.manual_seed(1)
    b = fastmtl.create_model(name, img_size=32).eval()
    b.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x).seg_logits, b(x).seg_logits, rtol=0, atol=0)


def test_state_dict_is_the_same_for_every_kernel_backend() -> None:
    keys = {}
    for backend in ("reference", "triton", "auto"):
        with fastmtl.kernel_backend(backend):
            model = fastmtl.create_model("resformer_mtl", img_size=32)
        keys[backend] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert {m.kernels for m in kernel_layers(model)} == {backend} == {model.config.kernels}
    assert keys["reference"] == keys["triton"] == keys["auto"]
    fastmtl.set_kernel_backend(model, "reference")
    assert {m.kernels for m in kernel_layers(model)} == {"reference"} == {model.config.kernels}
