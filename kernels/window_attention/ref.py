"""The PyTorch reference of shifted-window attention with relative position bias: test oracle, fp32 baseline and
the CPU path of the ``fastmtl::window_attention_*`` ops, plus the window helpers the Swin layers use.

Tokens are (B, H, W, C) maps. ``upcast=True`` computes in fp32 whatever the input dtype (the op's numerics);
``upcast=False`` computes in the input dtype (the layers' reference backend, autocast included).
"""

from __future__ import annotations

import math

import torch

MASK_VALUE = -100.0  # additive penalty across the shifted-window seams, as in Swin
LOG2E = math.log2(math.e)  # the kernels keep the log-sum-exp in the log2 domain


def relative_position_index(window: int, device: torch.device | None = None) -> torch.Tensor:
    """(N, N) index into the (2w-1)^2 bias table for the token pair (i, j) of one w x w window, N = w*w."""
    r = torch.arange(window, device=device)
    coords = torch.stack(torch.meshgrid(r, r, indexing="ij")).flatten(1)  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, N, N), each in [0, 2w-2]
    return rel[0] * (2 * window - 1) + rel[1]


def shift_region_ids(height: int, width: int, window: int, shift: int, device: torch.device | None = None):
    """(H, W) region id of every position of the rolled map; tokens attend only within their region."""

    def bands(n: int) -> torch.Tensor:
        pos = torch.arange(n, device=device)
        return (pos >= n - window).long() + (pos >= n - shift).long()  # 0, 1, 2 along one axis

    return bands(height)[:, None] * 3 + bands(width)[None, :]


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, w*w, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """(B * nW, w*w, C) -> (B, H, W, C); the inverse of :func:`window_partition`."""
    c = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def seam_mask(height: int, width: int, window: int, shift: int, device: torch.device | None = None) -> torch.Tensor:
    """(nW, N, N) additive mask (0 or -100) for the cyclically shifted windows of an H x W map.

    Built from shapes alone, so under ``torch.compile`` it folds into a constant.
    """
    ids = shift_region_ids(height, width, window, shift, device)[None, :, :, None]  # (1, H, W, 1)
    ids = window_partition(ids, window).squeeze(-1)  # (nW, N)
    return (ids[:, :, None] != ids[:, None, :]).float() * MASK_VALUE  # (nW, N, N)


def _to_windows(x: torch.Tensor, window: int, shift: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, N, C) windows of the map rolled by -shift."""
    return window_partition(torch.roll(x, (-shift, -shift), (1, 2)) if shift else x, window)


def _to_tokens(x: torch.Tensor, window: int, height: int, width: int, shift: int) -> torch.Tensor:
    """(B * nW, N, C) -> (B, H, W, C) at the un-shifted positions; the inverse of :func:`_to_windows`."""
    x = window_reverse(x, window, height, width)
    return torch.roll(x, (shift, shift), (1, 2)) if shift else x


def _logits(qkv, bias_table, window: int, shift: int, scale: float, upcast: bool):
    """q, k, v (B * nW, heads, N, d) and logits (B * nW, heads, N, N) with bias and seam mask."""
    b, h, w, _, heads, d = qkv.shape
    n = window * window
    win = _to_windows(qkv.reshape(b, h, w, -1), window, shift).view(-1, n, 3, heads, d)
    q, k, v = win.permute(2, 0, 3, 1, 4).unbind(0)
    if upcast:
        q, k, v, bias_table = q.float(), k.float(), v.float(), bias_table.float()
    index = relative_position_index(window, qkv.device).view(-1)
    logits = (q * scale) @ k.transpose(-2, -1) + bias_table[index].view(n, n, heads).permute(2, 0, 1)
    if shift:
        mask = seam_mask(h, w, window, shift, qkv.device).to(logits.dtype)[None, :, None]  # (1, nW, 1, N, N)
        logits = (logits.view(b, -1, heads, n, n) + mask).view(-1, heads, n, n)
    return q, k, v, logits


def window_attention_fwd_ref(
    qkv: torch.Tensor,
    bias_table: torch.Tensor,
    window: int,
    shift: int,
    scale: float | None = None,
    upcast: bool = True,
    with_lse: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The forward kernel's outputs: (out (B, H, W, heads*d) in qkv's dtype, lse (B, H, W, heads) fp32 in the log2
    domain, or None without ``with_lse``)."""
    b, h, w, _, heads, d = qkv.shape
    scale = d**-0.5 if scale is None else scale
    _, _, v, logits = _logits(qkv, bias_table, window, shift, scale, upcast)
    out = (logits.softmax(-1) @ v).transpose(1, 2).flatten(2)  # (B * nW, N, heads * d)
    out = _to_tokens(out, window, h, w, shift).to(qkv.dtype)
    if not with_lse:
        return out, None
    lse = (logits.float().logsumexp(-1) * LOG2E).transpose(1, 2)  # (B * nW, N, heads)
    return out, _to_tokens(lse, window, h, w, shift).contiguous()


def window_attention_ref(
    qkv: torch.Tensor,
    bias_table: torch.Tensor,
    window: int,
    shift: int,
    scale: float | None = None,
    upcast: bool = False,
) -> torch.Tensor:
    """Reference (shifted-)window multi-head attention with relative position bias.

    Args:
        qkv: (B, H, W, 3, heads, d) output of the fused qkv projection; H and W multiples of ``window``.
        bias_table: ((2w-1)^2, heads) relative position bias table.
        window: window side w.
        shift: cyclic shift (0 for plain windows); the map is rolled by -shift and seams are masked.
        scale: softmax scale, default d^-0.5.
        upcast: compute in fp32 (the kernel's numerics) rather than in qkv's dtype.

    Returns:
        (B, H, W, heads * d) attention output at the original (un-shifted) positions, in qkv's dtype.
    """
    return window_attention_fwd_ref(qkv, bias_table, window, shift, scale, upcast, with_lse=False)[0]


def _diagonal_sums(x: torch.Tensor) -> torch.Tensor:
    """(..., w, w) -> (..., 2w-1): entry i - j + w - 1 sums x[..., i, j] (skew the rows by padding, no scatter)."""
    w = x.shape[-1]
    skewed = torch.nn.functional.pad(x.flip(-1), (0, w)).flatten(-2)[..., : w * (2 * w - 1)]
    return skewed.unflatten(-1, (w, 2 * w - 1)).sum(-2)


def table_grad(dscore: torch.Tensor, window: int) -> torch.Tensor:
    """(heads, N, N) score gradient summed over windows -> ((2w-1)^2, heads) bias-table gradient, deterministic.

    Entry (dr, dc) of the table collects the pairs with row offset dr and column offset dc, so the sum splits into
    diagonal sums over the column pair, then over the row pair.
    """
    heads = dscore.shape[0]
    x = dscore.view(heads, window, window, window, window).permute(0, 1, 3, 2, 4)  # (heads, ri, rj, ci, cj)
    x = _diagonal_sums(x).permute(0, 3, 1, 2)  # (heads, dc, ri, rj)
    return _diagonal_sums(x).permute(2, 1, 0).reshape(-1, heads)  # (dr, dc, heads) -> ((2w-1)^2, heads)


def window_attention_bwd_ref(
    dout, qkv, bias_table, window: int, shift: int, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The backward kernels' outputs in fp32 math: (dqkv like qkv, bias-table gradient like bias_table); analytic
    softmax-attention gradients, the table gradient via :func:`table_grad`."""
    b, h, w, _, heads, d = qkv.shape
    scale = d**-0.5 if scale is None else scale
    q, k, v, logits = _logits(qkv, bias_table, window, shift, scale, upcast=True)
    p = logits.softmax(-1)
    do = _to_windows(dout.float(), window, shift).unflatten(-1, (heads, d)).transpose(1, 2)  # (B*nW, heads, N, d)
    dp = do @ v.transpose(-2, -1)
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    grads = (ds @ k * scale, ds.transpose(-2, -1) @ q * scale, p.transpose(-2, -1) @ do)
    dwin = torch.stack(grads, 2).permute(0, 3, 2, 1, 4).flatten(2)  # (B * nW, N, 3 * heads * d)
    dqkv = _to_tokens(dwin, window, h, w, shift).view(qkv.shape).to(qkv.dtype)
    return dqkv, table_grad(ds.sum(0), window).to(bias_table.dtype)
