"""Swin window layout checked against independent constructions."""

from __future__ import annotations

import itertools

import pytest
import torch

from fastmtl.layers.swin import (
    MASK_VALUE,
    Mlp,
    SwinBlock,
    relative_position_index,
    seam_mask,
    window_attention_ref,
    window_partition,
    window_reverse,
)


def slice_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """The Swin paper's construction: label 9 slices of the image, partition, compare labels."""
    img = torch.zeros(height, width)
    slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for cnt, (hs, ws) in enumerate(itertools.product(slices, slices)):
        img[hs, ws] = cnt
    rows = []
    for i in range(0, height, window):
        for j in range(0, width, window):
            labels = img[i : i + window, j : j + window].reshape(-1)
            rows.append(torch.where(labels[:, None] == labels[None, :], 0.0, MASK_VALUE))
    return torch.stack(rows)


@pytest.mark.parametrize("height, width, window", [(8, 8, 4), (12, 8, 4), (14, 21, 7), (6, 6, 3)])
def test_seam_mask_matches_slice_construction(height: int, width: int, window: int) -> None:
    shift = window // 2
    torch.testing.assert_close(seam_mask(height, width, window, shift), slice_mask(height, width, window, shift))


@pytest.mark.parametrize("window", [2, 3, 7])
def test_relative_position_index_by_brute_force(window: int) -> None:
    index = relative_position_index(window)
    positions = [(i, j) for i in range(window) for j in range(window)]
    for a, (ya, xa) in enumerate(positions):
        for b, (yb, xb) in enumerate(positions):
            assert index[a, b] == (ya - yb + window - 1) * (2 * window - 1) + (xa - xb + window - 1)


def test_partition_reverse_round_trip() -> None:
    x = torch.randn(2, 12, 8, 5)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 6, 16, 5)
    torch.testing.assert_close(windows[1].view(4, 4, 5), x[0, 0:4, 4:8])
    torch.testing.assert_close(window_reverse(windows, 4, 12, 8), x)


def naive_window_attention(qkv, table, window, shift):
    """Token-by-token: roll, then for every window and head a dense softmax with bias and seam penalty."""
    b, h, w, _, heads, d = qkv.shape
    rolled = torch.roll(qkv, (-shift, -shift), dims=(1, 2))
    region = torch.zeros(h, w, dtype=torch.long)
    if shift:
        bands = lambda n: (torch.arange(n) >= n - window).long() + (torch.arange(n) >= n - shift).long()  # noqa: E731
        region = bands(h)[:, None] * 3 + bands(w)[None, :]
    out = torch.zeros(b, h, w, heads, d)
    for i0, j0 in itertools.product(range(0, h, window), range(0, w, window)):
        ys, xs = torch.meshgrid(torch.arange(i0, i0 + window), torch.arange(j0, j0 + window), indexing="ij")
        ys, xs = ys.reshape(-1), xs.reshape(-1)
        q, k, v = (rolled[:, ys, xs, t] for t in range(3))  # (B, N, heads, d)
        dy = (ys[:, None] - ys[None, :]) + window - 1
        dx = (xs[:, None] - xs[None, :]) + window - 1
        bias = table[dy * (2 * window - 1) + dx]  # (N, N, heads)
        same = region[ys, xs][:, None] == region[ys, xs][None, :]
        scores = torch.einsum("bnhd,bmhd->bhnm", q, k) * d**-0.5 + bias.permute(2, 0, 1)
        scores = scores + torch.where(same, 0.0, MASK_VALUE)
        out[:, ys, xs] = torch.einsum("bhnm,bmhd->bnhd", scores.softmax(-1), v)
    return torch.roll(out, (shift, shift), dims=(1, 2)).reshape(b, h, w, heads * d)


@pytest.mark.parametrize("shift", [0, 2])
def test_window_attention_ref_matches_naive(shift: int) -> None:
    torch.manual_seed(0)
    qkv = torch.randn(2, 8, 12, 3, 2, 8)
    table = torch.randn(49, 2)
    torch.testing.assert_close(window_attention_ref(qkv, table, 4, shift), naive_window_attention(qkv, table, 4, shift))


def test_authors_mlp_layout_scrambles_tokens_like_their_code() -> None:
    torch.manual_seed(0)
    mlp = Mlp(8, 16, eca_layout="authors")
    x = torch.randn(2, 4, 4, 8)
    b, n, c = 2, 16, 8
    y = mlp.fc2(mlp.act(mlp.fc1(x.reshape(b, n, c))))
    expected = mlp.eca(y.view(b, c, 4, 4)).flatten(2).transpose(1, 2)  # their view without transpose
    torch.testing.assert_close(mlp(x).reshape(b, n, c), expected)
    fixed = Mlp(8, 16)
    fixed.load_state_dict(mlp.state_dict())
    assert not torch.allclose(fixed(x), mlp(x))


def test_block_skips_shift_on_a_single_window() -> None:
    block = SwinBlock(32, 1, window=4, shift=2).eval()
    x = torch.randn(1, 4, 4, 32)
    plain = SwinBlock(32, 1, window=4, shift=0).eval()
    plain.load_state_dict(block.state_dict())
    torch.testing.assert_close(block(x), plain(x))
    with pytest.raises(ValueError, match="not a multiple of the window side 4"):
        block(torch.randn(1, 6, 8, 32))
