"""Triton kernels of the DFE ops (see the package docstring for the design); launched from ``ops.py``."""

import triton
import triton.language as tl

# fmt: off
# Dense argument lists (grouped as the launch plans in ops.py build them); one per line would double each kernel.


@triton.jit
def _conv_taps(acc, n_taps, x_ptr, stride_xc, stride_xh, stride_xw, w_ptr, stride_wt, stride_wk, c_in, height, width,
               m0, offs_m, offs_n, n_ok, rate, skip_center, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_K: tl.constexpr):
    """acc += sum over the live taps t of a 3x3 pattern (rate 0: one 1x1 tap) of x[shift_t(pixels), :] @ w[t]."""
    n_pix = height * width
    h = offs_m // width
    w = offs_m % width
    m_ok = offs_m < n_pix
    # Bounding box of the tile's pixels (rows h_lo..h_hi; a tile spanning rows may touch every column).
    m_last = tl.minimum(m0 + BLOCK_M - 1, n_pix - 1)
    h_lo = m0 // width
    h_hi = m_last // width
    w_lo = tl.where(h_lo == h_hi, m0 % width, 0)
    w_hi = tl.where(h_lo == h_hi, m_last % width, width - 1)
    offs_k = tl.arange(0, BLOCK_K)
    for t in range(9):
        dy = (t // 3 - 1) * rate
        dx = (t % 3 - 1) * rate
        live = (h_lo + dy < height) & (h_hi + dy >= 0) & (w_lo + dx < width) & (w_hi + dx >= 0)
        live = live & ((rate > 0) | (t == 4)) & ((t != 4) | (skip_center == 0))
        if live:
            hh = h + dy
            ww = w + dx
            ok = m_ok & (hh >= 0) & (hh < height) & (ww >= 0) & (ww < width)
            x_tap = x_ptr + hh * stride_xh + ww * stride_xw  # (BLOCK_M,) pointers to channel 0
            w_tap = w_ptr + tl.where(rate > 0, t, 0) * stride_wt
            for k0 in range(0, c_in, BLOCK_K):
                k = k0 + offs_k
                k_ok = k < c_in
                a = tl.load(x_tap[:, None] + k[None, :] * stride_xc, mask=ok[:, None] & k_ok[None, :], other=0.0)
                b = tl.load(w_tap + k[:, None] * stride_wk + offs_n[None, :], mask=k_ok[:, None] & n_ok[None, :],
                            other=0.0)
                acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
            n_taps += 1
    return acc, n_taps


@triton.jit
def _store_tile(acc, bias_ptr, out_ptr, stride_oc, stride_oh, stride_ow, c_off, offs_m, offs_n, n_ok, height, width,
                HAS_BIAS: tl.constexpr, RELU: tl.constexpr):
    """Epilogue: + bias, ReLU, cast to the output dtype, store channels c_off + offs_n of the pixel tile."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c_off + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    pix = (offs_m // width) * stride_oh + (offs_m % width) * stride_ow
    ptrs = out_ptr + pix[:, None] + (c_off + offs_n)[None, :] * stride_oc
    tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=(offs_m < height * width)[:, None] & n_ok[None, :])


@triton.jit
def _dfe_branches_kernel(
    x_ptr,  # (B, C_in, H, W), any strides
    w_ptr,  # (NB, T, C_in, C_out) contiguous, T = 9 (or 1 when every rate is 0)
    bias_ptr,  # (NB * C_out,) fp32, or (C_out,) when SUM_BRANCHES
    out_ptr,  # (B, NB * C_out, H, W), or (B, C_out, H, W) when SUM_BRANCHES
    count_ptr,  # (grid0, grid1) int32 executed-tap counter, written only when COUNT_TAPS
    c_in, c_out, height, width, n_branches, rates_packed,
    stride_xb, stride_xc, stride_xh, stride_xw, stride_wb, stride_wt,
    stride_ob, stride_oc, stride_oh, stride_ow,
    SUM_BRANCHES: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr, COUNT_TAPS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_n = tl.program_id(1)
    n_tiles = tl.cdiv(height * width, BLOCK_M)
    if SUM_BRANCHES:
        br_lo = 0
        br_hi = n_branches
        rest = pid
    else:  # branch fastest: the nb programs of one pixel tile are adjacent and share its reads through L2
        br_lo = pid % n_branches
        br_hi = br_lo + 1
        rest = pid // n_branches
    tile = rest % n_tiles
    batch = (rest // n_tiles).to(tl.int64)
    m0 = tile * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < c_out
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    n_taps = tl.full((), 0, tl.int32)
    for br in range(br_lo, br_hi):
        rate = (rates_packed >> (8 * br)) & 255
        if SUM_BRANCHES:
            skip_center = br  # DFE3: the centre taps of branches > 0 are pre-summed into branch 0
        else:
            skip_center = 0
        acc, n_taps = _conv_taps(acc, n_taps, x_ptr + batch * stride_xb, stride_xc, stride_xh, stride_xw,
                                 w_ptr + br * stride_wb, stride_wt, c_out, c_in, height, width, m0, offs_m, offs_n,
                                 n_ok, rate, skip_center, DOT_PRECISION, BLOCK_M, BLOCK_K)
    if COUNT_TAPS:
        tl.store(count_ptr + pid * tl.num_programs(1) + pid_n, n_taps)
    c_off = 0 if SUM_BRANCHES else br_lo * c_out
    _store_tile(acc, bias_ptr, out_ptr + batch * stride_ob, stride_oc, stride_oh, stride_ow, c_off, offs_m, offs_n,
                n_ok, height, width, HAS_BIAS, RELU)


@triton.jit
def _dfe_merge_kernel(
    cat_ptr,  # (B, C_cat, H, W), any strides
    x_ptr,  # (B, C_in, H, W), any strides; read only when HAS_SHORTCUT
    w_ptr,  # (9, C_cat, C_out) contiguous, folded 3x3 merge conv
    ws_ptr,  # (1, C_in, C_out) contiguous, folded 1x1 shortcut conv
    bias_ptr,  # (C_out,) fp32, both BN shifts summed
    out_ptr,  # (B, C_out, H, W)
    c_cat, c_in, c_out, height, width,
    stride_cb, stride_cc, stride_ch, stride_cw, stride_xb, stride_xc, stride_xh, stride_xw,
    stride_ob, stride_oc, stride_oh, stride_ow,
    HAS_SHORTCUT: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_n = tl.program_id(1)
    n_tiles = tl.cdiv(height * width, BLOCK_M)
    batch = (pid // n_tiles).to(tl.int64)
    m0 = (pid % n_tiles) * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < c_out
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    n = tl.full((), 0, tl.int32)  # executed-tap count, unused here
    acc, n = _conv_taps(acc, n, cat_ptr + batch * stride_cb, stride_cc, stride_ch, stride_cw, w_ptr, c_cat * c_out,
                        c_out, c_cat, height, width, m0, offs_m, offs_n, n_ok, 1, 0, DOT_PRECISION, BLOCK_M, BLOCK_K)
    if HAS_SHORTCUT:
        acc, n = _conv_taps(acc, n, x_ptr + batch * stride_xb, stride_xc, stride_xh, stride_xw, ws_ptr, 0, c_out,
                            c_in, height, width, m0, offs_m, offs_n, n_ok, 0, 0, DOT_PRECISION, BLOCK_M, BLOCK_K)
    _store_tile(acc, bias_ptr, out_ptr + batch * stride_ob, stride_oc, stride_oh, stride_ow, 0, offs_m, offs_n, n_ok,
                height, width, HAS_BIAS, RELU)


@triton.jit
def _sa_pool_kernel(
    x_ptr,  # (B, C, H, W), any strides
    pooled_ptr,  # (B, 2, H*W) fp32 contiguous: channel mean, channel max
    channels, height, width, stride_xb, stride_xc, stride_xh, stride_xw,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n_pix = height * width
    n_tiles = tl.cdiv(n_pix, BLOCK_M)
    batch = (tl.program_id(0) // n_tiles).to(tl.int64)
    offs_m = (tl.program_id(0) % n_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < n_pix
    x_pix = x_ptr + batch * stride_xb + (offs_m // width) * stride_xh + (offs_m % width) * stride_xw
    total = tl.zeros((BLOCK_M,), dtype=tl.float32)
    peak = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    for c0 in range(0, channels, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        ok = m_ok[:, None] & (c < channels)[None, :]
        v = tl.load(x_pix[:, None] + c[None, :] * stride_xc, mask=ok, other=0.0).to(tl.float32)
        total += tl.sum(v, axis=1)
        peak = tl.maximum(peak, tl.max(tl.where(ok, v, float("-inf")), axis=1))
    out = pooled_ptr + batch * 2 * n_pix + offs_m
    tl.store(out, total / channels, mask=m_ok)
    tl.store(out + n_pix, peak, mask=m_ok)


@triton.jit
def _sa_gate_kernel(
    x_ptr,  # (B, C, H, W), any strides
    pooled_ptr,  # (B, 2, H*W) fp32 contiguous
    w_ptr,  # (1, 2, KSIZE, KSIZE) contiguous gate conv weight
    out_ptr,  # (B, C, H, W), any strides
    channels, height, width, stride_xb, stride_xc, stride_xh, stride_xw, stride_ob, stride_oc, stride_oh, stride_ow,
    KSIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n_pix = height * width
    n_tiles = tl.cdiv(n_pix, BLOCK_M)
    batch = (tl.program_id(0) // n_tiles).to(tl.int64)
    offs_m = (tl.program_id(0) % n_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < n_pix
    h = offs_m // width
    w = offs_m % width
    logit = tl.zeros((BLOCK_M,), dtype=tl.float32)
    pooled = pooled_ptr + batch * 2 * n_pix
    for t in range(KSIZE * KSIZE):  # the gate is computed once per pixel, then applied to every channel
        hh = h + t // KSIZE - KSIZE // 2
        ww = w + t % KSIZE - KSIZE // 2
        ok = m_ok & (hh >= 0) & (hh < height) & (ww >= 0) & (ww < width)
        mean = tl.load(pooled + hh * width + ww, mask=ok, other=0.0)
        peak = tl.load(pooled + n_pix + hh * width + ww, mask=ok, other=0.0)
        w_mean = tl.load(w_ptr + t).to(tl.float32)
        w_peak = tl.load(w_ptr + KSIZE * KSIZE + t).to(tl.float32)
        logit += mean * w_mean + peak * w_peak
    gate = tl.sigmoid(logit)[:, None]
    x_pix = x_ptr + batch * stride_xb + h * stride_xh + w * stride_xw
    o_pix = out_ptr + batch * stride_ob + h * stride_oh + w * stride_ow
    for c0 in range(0, channels, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        ok = m_ok[:, None] & (c < channels)[None, :]
        v = tl.load(x_pix[:, None] + c[None, :] * stride_xc, mask=ok, other=0.0).to(tl.float32)
        tl.store(o_pix[:, None] + c[None, :] * stride_oc, (v * gate).to(out_ptr.dtype.element_ty), mask=ok)
# fmt: on
