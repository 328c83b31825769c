"""Loading the authors' checkpoints: every key placed, sizes inferred, wrappers, errors, functional checks.

The authors' state_dicts are generated here from their module structure (``Res34_Swin_MS`` in
nguyenpbui/ResFormer ``src/models``, commit ce6948b), written out as (key, shape) walks, not copied classes.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastmtl import from_authors_state_dict, load_authors_checkpoint
from fastmtl.layers.swin import Mlp

WIDTHS, DEPTHS, HEADS = (64, 128, 256, 512), (3, 4, 6, 3), (2, 4, 8, 16)


def _bn(p, c):
    yield from ((f"{p}.{n}", (c,)) for n in ("weight", "bias", "running_mean", "running_var"))
    yield f"{p}.num_batches_tracked", ()


def _conv(p, cout, cin, k, bias=False):
    yield f"{p}.weight", (cout, cin, k, k)
    if bias:
        yield f"{p}.bias", (cout,)


def _linear(p, cout, cin):
    yield from ((f"{p}.weight", (cout, cin)), (f"{p}.bias", (cout,)))


def _ln(p, c):
    yield from ((f"{p}.weight", (c,)), (f"{p}.bias", (c,)))


def _swin_buffers(side, w, shifted):
    """Relative position index of a w x w window and, if shifted, the (nW, N, N) seam mask of a side^2 map."""
    i = torch.arange(w * w)
    index = (i[:, None] // w - i // w + w - 1) * (2 * w - 1) + (i[:, None] % w - i % w + w - 1)
    if not shifted:
        return index, None
    wy, wx, py, px = torch.meshgrid(*(torch.arange(n) for n in (side // w, side // w, w, w)), indexing="ij")

    def band(p):  # 0 / 1 / 2 along one axis of the rolled map
        return (p >= side - w).long() + (p >= side - w // 2).long()

    label = (band(wy * w + py) * 3 + band(wx * w + px)).reshape(-1, w * w)
    return index, (label[:, :, None] != label[:, None, :]).float() * -100.0


def authors_keys(img, seg, cls, dfe):
    """Yields (key, shape) for parameters and (key, tensor) for the Swin buffers of ``Res34_Swin_MS``."""
    yield from _conv("conv1", 64, 3, 7)
    yield from _bn("bn1", 64)
    cin = 64
    for i, (w, depth) in enumerate(zip(WIDTHS, DEPTHS, strict=True)):
        for j in range(depth):
            p = f"layer{i + 1}.{j}"
            yield from _conv(f"{p}.conv1", w, cin if j == 0 else w, 3)
            yield from _bn(f"{p}.bn1", w)
            yield from _conv(f"{p}.conv2", w, w, 3)
            yield from _bn(f"{p}.bn2", w)
            if j == 0 and i > 0:
                yield from _conv(f"{p}.downsample.0", w, cin, 1)
                yield from _bn(f"{p}.downsample.1", w)
        cin = w
    yield "patch_embed.eca.conv.weight", (1, 1, 3)
    for n, (k, c) in enumerate(zip((2, 4, 8, 16), (32, 16, 8, 8), strict=True)):
        yield from _conv(f"patch_embed.projs.{n}", c, 3, k, bias=True)
    yield from _ln("patch_embed.norm", 64)
    for k, d in zip((2, 3, 4), WIDTHS[:3], strict=True):
        yield from _ln(f"MS{k}.norm", d)
        yield f"MS{k}.eca.conv.weight", (1, 1, 3)
        yield from _conv(f"MS{k}.reductions.0.0", d, d, 2, bias=True)
        yield from _conv(f"MS{k}.reductions.1.0", d, d, 4, bias=True)
    win = img // 16
    for i, (d, heads) in enumerate(zip(WIDTHS, HEADS, strict=True)):
        side = img // 2 ** (i + 1)
        for j in range(2):
            p = f"swin_layers.{i}.blocks.{j}"
            index, mask = _swin_buffers(side, win, shifted=j == 1 and side > win)
            yield from _ln(f"{p}.norm1", d)
            yield f"{p}.attn.relative_position_bias_table", ((2 * win - 1) ** 2, heads)
            yield f"{p}.attn.relative_position_index", index
            yield from _linear(f"{p}.attn.qkv", 3 * d, d)
            yield from _linear(f"{p}.attn.proj", d, d)
            yield from _ln(f"{p}.norm2", d)
            yield from _linear(f"{p}.mlp.fc1", 4 * d, d)
            yield from _linear(f"{p}.mlp.fc2", d, 4 * d)
            yield f"{p}.mlp.eca.conv.weight", (1, 1, 3)
            if mask is not None:
                yield f"{p}.attn_mask", mask
    for k, cout in zip((4, 3, 2), (256, 128, 64), strict=True):
        yield from ((f"decode{k}.up.weight", (2 * cout, cout, 2, 2)), (f"decode{k}.up.bias", (cout,)))
        yield from _conv(f"decode{k}.conv_bn_relu.0", cout, 2 * cout, 3, bias=True)
        yield from _bn(f"decode{k}.conv_bn_relu.1", cout)
    yield "decode0.1.weight", (seg, 64, 1, 1)
    for k, c in enumerate(WIDTHS * dfe, start=1):  # FEM_4: conv2d(...) = Sequential(Conv2d, BN) under .conv
        for n, (cin, ks) in enumerate(((c, 1), (c, 3), (c, 3), (c, 3), (4 * c, 3), (c, 1)), start=1):
            yield from _conv(f"fem{k}.conv{n}.conv.0", c, cin, ks)
            yield from _bn(f"fem{k}.conv{n}.conv.1", c)
        yield f"fem{k}.sa.conv1.weight", (1, 2, 7, 7)
    yield from _bn("cls_conv_3.0", 512)
    yield from _bn("cls_conv_2.0", 256)
    yield from _linear("fc1", 32, 768)
    yield from _linear("fc2", cls, 32)


def authors_state_dict(img=32, seg=4, cls=3, dfe=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, spec in authors_keys(img, seg, cls, dfe):
        if isinstance(spec, torch.Tensor):
            out[key] = spec
        elif key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            out[key] = torch.rand(spec, generator=g) + 0.5
        else:  # fan-in scaling keeps a random 40-layer network finite
            out[key] = torch.randn(spec, generator=g) / math.sqrt(math.prod(spec[1:]) if len(spec) > 1 else 10)
    return out


def _is_buffer(key):
    return key.endswith(("relative_position_index", "attn_mask"))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Small tensors gain nothing from threads; on a busy 2-core machine OpenMP hand-offs made each op ~20x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# img_size 32 (window 2, a 3 x 3 bias table) keeps the forward passes cheap; 224 is checked for inference only.
@pytest.fixture(scope="module")
def serial_sd():
    return authors_state_dict(32, seg=4, cls=3, dfe=True)


@pytest.fixture(scope="module")
def nodfe_sd():
    return authors_state_dict(32, seg=1, cls=3, dfe=False, seed=1)


@pytest.fixture(scope="module")
def serial_loaded(serial_sd):
    return from_authors_state_dict(serial_sd, kernels="reference")


def _assert_exact_load(model, report, sd):
    assert report.complete, str(report)
    assert sorted(report.ignored) == sorted(k for k in sd if _is_buffer(k))
    assert set(report.loaded) | set(report.ignored) == set(sd)
    own = model.state_dict()
    assert set(report.loaded.values()) == set(own)
    for src, dst in report.loaded.items():
        assert torch.equal(own[dst], sd[src]), (src, dst)


@pytest.mark.parametrize("dfe, seg, variant, fusion", [(True, 4, "serial", "serial"), (False, 1, "nodfe", "parallel")])
def test_every_key_placed_and_forward_runs(request, dfe, seg, variant, fusion):
    sd = request.getfixturevalue("serial_sd" if dfe else "nodfe_sd")
    model, report = request.getfixturevalue("serial_loaded") if dfe else from_authors_state_dict(sd)
    assert report.variant == f"resformer_mtl_{variant}"
    cfg = model.config
    assert (cfg.fusion, cfg.dfe != "none", cfg.img_size, cfg.seg_classes, cfg.cls_classes) == (fusion, dfe, 32, seg, 3)
    assert cfg.eca_layout == "authors"
    _assert_exact_load(model, report, sd)
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, 32, 32))
    assert out.seg_logits.shape == (2, seg, 32, 32) and out.cls_logits.shape == (2, 3)
    assert torch.isfinite(out.seg_logits).all() and torch.isfinite(out.cls_logits).all()


def test_sizes_inferred_at_224():
    sd = authors_state_dict(224, seg=4, cls=5, dfe=False)
    assert sd["swin_layers.0.blocks.0.attn.relative_position_bias_table"].shape == (27**2, 2)
    model, report = from_authors_state_dict({f"module.{k}": v for k, v in sd.items()})
    cfg = model.config
    assert (cfg.img_size, cfg.window, cfg.seg_classes, cfg.cls_classes, cfg.in_chans) == (224, 14, 4, 5, 3)
    _assert_exact_load(model, report, sd)


def test_variant_override_loads_dfe_into_parallel_fusion(serial_sd):
    model, report = from_authors_state_dict(serial_sd, variant="resformer_mtl", kernels="reference")
    assert report.variant == "resformer_mtl" and model.config.fusion == "parallel" and model.config.dfe == "four"
    _assert_exact_load(model, report, serial_sd)
    with pytest.raises(ValueError, match="not one of"):
        from_authors_state_dict(serial_sd, variant="resformer")


def test_unplaced_missing_and_strict(nodfe_sd):
    sd = dict(nodfe_sd)
    sd["extra.weight"] = torch.zeros(3)
    sd["MS5.norm.weight"] = torch.zeros(512)
    sd["fc1.weight"] = torch.zeros(32, 700)
    del sd["decode4.up.bias"]
    sd["swin_layers.1.blocks.0.attn.relative_position_index"] = torch.zeros(4, 4, dtype=torch.long)
    model, report = from_authors_state_dict(sd)
    assert report.unplaced["extra.weight"] == "no mapping rule"
    assert "no mapping rule" in report.unplaced["MS5.norm.weight"]
    assert "shape (32, 700)" in report.unplaced["fc1.weight"]
    assert "differs" in report.unplaced["swin_layers.1.blocks.0.attn.relative_position_index"]
    assert sorted(report.missing) == ["cls_head.fc1.weight", "decoder.blocks.0.up.bias"]
    assert not report.complete and "extra.weight" in str(report) and "decoder.blocks.0.up.bias" in str(report)
    with pytest.raises(ValueError, match=r"(?s)unplaced \(4\).*extra\.weight.*missing \(2\)"):
        from_authors_state_dict(sd, strict=True)
    with pytest.raises(ValueError, match="img_size"):
        from_authors_state_dict({"fc2.weight": torch.zeros(3, 32)})


def test_load_checkpoint_file_wrappers(tmp_path, nodfe_sd):
    prefixed = {f"module.{k}": v for k, v in nodfe_sd.items()}  # what DataParallel(model).state_dict() holds
    torch.save({"state_dict": prefixed, "epoch": 3}, tmp_path / "best.pth")
    model, report = load_authors_checkpoint(tmp_path / "best.pth", strict=True)
    _assert_exact_load(model, report, nodfe_sd)
    with pytest.raises(FileNotFoundError):
        load_authors_checkpoint(tmp_path / "absent.pth")


def test_mlp_authors_layout_matches_their_forward():
    torch.manual_seed(0)
    b, h, w, c = 2, 4, 4, 8
    mlp = Mlp(c, 4 * c, eca_layout="authors")
    x = torch.randn(b, h * w, c)
    # Their Mlp.forward: fc1 -> GELU -> fc2 -> view(B, C, H, W) (no transpose) -> residual ECA -> flatten+transpose.
    y = F.linear(F.gelu(F.linear(x, mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight, mlp.fc2.bias).view(b, c, h, w)
    gate = torch.sigmoid(F.conv1d(y.mean((2, 3))[:, None], mlp.eca.conv.weight, padding=1))  # (B, 1, C)
    y = y * gate.transpose(1, 2)[..., None] + y
    expected = y.flatten(2).transpose(1, 2)
    torch.testing.assert_close(mlp(x.view(b, h, w, c)).reshape(b, h * w, c), expected, rtol=1e-5, atol=1e-5)
    mlp.eca_layout = "transpose"
    assert not torch.allclose(mlp(x.view(b, h, w, c)).reshape(b, h * w, c), expected, atol=1e-3)


def test_dfe_matches_their_fem_forward(serial_sd, serial_loaded):
    model = serial_loaded[0]
    dfe, p = model.decoder.dfe[1].eval(), {k[5:]: v for k, v in serial_sd.items() if k.startswith("fem2.")}
    x = torch.randn(2, 128, 16, 16)

    def conv_bn(x, n, dilation=1, relu=True):  # their conv2d(...): Conv2d(bias=False) -> BN (eval) [-> ReLU]
        weight = p[f"conv{n}.conv.0.weight"]
        y = F.conv2d(x, weight, padding=dilation * (weight.shape[-1] // 2), dilation=dilation)
        bn = [p[f"conv{n}.conv.1.{s}"] for s in ("running_mean", "running_var", "weight", "bias")]
        y = F.batch_norm(y, *bn, training=False, eps=1e-5)
        return F.relu(y) if relu else y

    xc = conv_bn(torch.cat([conv_bn(x, 1), conv_bn(x, 2, 6), conv_bn(x, 3, 12), conv_bn(x, 4, 18)], 1), 5, relu=False)
    y = F.relu(xc + conv_bn(x, 6, relu=False))
    pooled = torch.cat([y.mean(1, keepdim=True), y.amax(1, keepdim=True)], 1)  # Dec_SA: [avg_out, max_out]
    expected = y * torch.sigmoid(F.conv2d(pooled, p["sa.conv1.weight"], padding=3))
    with torch.no_grad():
        torch.testing.assert_close(dfe(x), expected, rtol=1e-4, atol=1e-5)
