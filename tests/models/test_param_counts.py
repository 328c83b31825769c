"""Parameter counts derived independently from the layer shapes of SPEC.md, checked against the built model."""

from __future__ import annotations

import pytest

import fastmtl


def conv(cin: int, cout: int, k: int, bias: bool = False) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c  # weight and bias (running stats are buffers)


def resnet34_trunk() -> int:
    total, cin = conv(3, 64, 7) + bn(64), 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for _ in range(blocks):
            total += conv(cin, width, 3) + bn(width) + conv(width, width, 3) + bn(width)
            if cin != width:
                total += conv(cin, width, 1) + bn(width)
            cin = width
    return total


def swin(img_size: int) -> int:
    window, total = img_size // 16, 0
    for dim, heads in zip((64, 128, 256, 512), (2, 4, 8, 16)):
        block = 2 * 2 * dim  # two LayerNorms
        block += dim * 3 * dim + 3 * dim + dim * dim + dim  # qkv and proj
        block += (2 * window - 1) ** 2 * heads  # relative position bias table
        block += dim * 4 * dim + 4 * dim + 4 * dim * dim + dim + 3  # MLP + its ECA
        total += 2 * block
    return total


def patch_embed_and_merges() -> int:
    embed = sum(conv(3, c, k, bias=True) for k, c in zip((2, 4, 8, 16), (32, 16, 8, 8))) + 3 + 2 * 64
    merges = sum(2 * d + conv(d, d, 2, True) + conv(d, d, 4, True) + 3 for d in (64, 128, 256))
    return embed + merges


def dfe(c: int) -> int:
    branches = conv(c, c, 1) + 3 * conv(c, c, 3) + 4 * bn(c)
    return branches + conv(4 * c, c, 3) + bn(c) + conv(c, c, 1) + bn(c) + conv(2, 1, 7)


def decoder(seg: int) -> int:
    total = 0
    for cin, cout in ((512, 256), (256, 128), (128, 64)):
        total += cin * cout * 4 + cout + conv(2 * cout, cout, 3, True) + bn(cout)
    return total + conv(64, seg, 1)


def head(cls: int) -> int:
    return bn(512) + bn(256) + 768 * 32 + 32 + 32 * cls + cls


@pytest.mark.parametrize("img_size, seg, with_dfe", [(224, 1, True), (224, 1, False), (512, 4, True)])
def test_resformer_parameter_count(img_size: int, seg: int, with_dfe: bool) -> None:
    expected = resnet34_trunk() + swin(img_size) + patch_embed_and_merges() + decoder(seg) + head(3)
    if with_dfe:
        expected += sum(dfe(c) for c in (64, 128, 256, 512))
    name = "resformer_mtl" if with_dfe else "resformer_mtl_nodfe"
    model = fastmtl.create_model(name, img_size=img_size, seg_classes=seg)
    assert sum(p.numel() for p in model.parameters()) == expected
    target = 56.35e6 if with_dfe else 33.70e6  # SPEC.md §7
    assert abs(expected - target) / target < 0.02


def test_component_sizes_match_spec() -> None:
    assert resnet34_trunk() == 21_284_672  # torchvision resnet34 without fc
    assert round(swin(224) / 1e6, 2) == 8.42
    assert [round(dfe(c) / 1e6, 2) for c in (64, 128, 256, 512)] == [0.27, 1.07, 4.26, 17.05]
    assert head(3) == 26_243
