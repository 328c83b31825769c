"""Fused shifted-window attention with relative position bias (Swin W-MSA / SW-MSA) in Triton.

Computes :func:`~.ref.window_attention_ref` in one pass per (window, head, query tile): q, k and v are
read straight from the fused qkv projection's (B, H, W, 3, heads, d) layout with the cyclic shift and the window
partition done by index arithmetic, the relative position bias is gathered from the (2w-1)^2 x heads table and the
seam mask rebuilt from region ids inside the kernel, the softmax is online (flash-attention style) with fp32
statistics and accumulation, and the output is written to (B, H, W, heads * d) at the un-shifted positions.
Window token counts that are not powers of two (49, 196, 1024...) are handled by masking the last tile.

Backward (Triton): one kernel for dK/dV per key tile, one for dQ per query tile (both recompute the scores from
the saved log-sum-exp), and one for the bias gradient that sums dS over groups of windows per score tile in a
fixed order; the (G, heads, N, N) partials are summed and folded onto the table by diagonal sums, so every
gradient is deterministic (no atomics).

Unsupported on purpose: head dims outside 16/32/64/128, maps that are not multiples of the window, attention
dropout, and double backward.

Anatomy (the same in every op package): ``kernels.py`` the ``@triton.jit`` code, ``ops.py`` the launchers, the
``torch.library`` ops with their fakes and autograd, ``ref.py`` the one PyTorch reference (no Triton: the Swin
layers import their window helpers from it), ``aot.py`` the ahead-of-time compilation of every launch.
"""

from .ref import table_grad, window_attention_ref

__all__ = ["table_grad", "window_attention", "window_attention_ref"]


def __getattr__(name: str):
    """``window_attention`` imports Triton and registers the ops: only on first use, so ``ref`` needs no Triton."""
    if name == "window_attention":
        from .ops import window_attention

        return window_attention
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
