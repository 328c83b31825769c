"""Triton kernels of the fused (shifted-)window attention; launched from :mod:`.op`.

Every program owns one (window, head) pair of one image and a tile of that window's N = w*w tokens. Token t of
window (wr, wc) sits at rolled-map position (wr*w + t // w, wc*w + t % w); the rolled map is the input rolled by
-shift, so the token is read from (and written to) original position ((wr*w + t//w + shift) % H, ...). No rolled,
partitioned or reversed copy exists. The relative position bias is gathered from the (2w-1)^2 x heads table and
the seam mask is rebuilt from region ids, both per score tile. Scores live in the log2 domain (scaled by log2 e)
so the softmax uses exp2; the saved log-sum-exp ``lse`` is in that domain too.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
MASK_VALUE = -100.0  # additive seam penalty, as in Swin (ref.MASK_VALUE)


@triton.jit
def _tokens(t, win_row, win_col, height, width, shift, WINDOW: tl.constexpr, SHIFTED: tl.constexpr):
    """Window-local tokens t -> (bias coordinate, original map row, original map col, region id).

    The bias coordinate r * (2w-1) + c of in-window position (r, c) makes the table index of a token pair
    (i, j) a difference: coord_i - coord_j + (w-1) * (2w-1) + (w-1).

    Padded tokens t >= N are clamped to the last real token, so every address and bias index stays in range and
    loads need no mask; callers mask scores, gradients and stores instead.
    """
    t = tl.minimum(t, WINDOW * WINDOW - 1)
    r = t // WINDOW
    c = t % WINDOW
    rolled_r = win_row * WINDOW + r
    rolled_c = win_col * WINDOW + c
    region = tl.zeros_like(t)
    if SHIFTED:
        # Same bands as ref.shift_region_ids: 0 | last window minus shift | last shift positions.
        band_r = (rolled_r >= height - WINDOW).to(tl.int32) + (rolled_r >= height - shift).to(tl.int32)
        band_c = (rolled_c >= width - WINDOW).to(tl.int32) + (rolled_c >= width - shift).to(tl.int32)
        region = band_r * 3 + band_c
    return r * (2 * WINDOW - 1) + c, (rolled_r + shift) % height, (rolled_c + shift) % width, region


@triton.jit
def _program(pid, n_heads, n_win, n_win_w):
    """Program id over (image, window, head) -> (image, head, window row, window col)."""
    win = pid // n_heads % n_win
    b = (pid // n_heads // n_win).to(tl.int64)  # image offsets can pass 2^31 elements at large batches
    return b, pid % n_heads, win // n_win_w, win % n_win_w


@triton.jit
def _scores(
    q,
    k,
    pos_q,
    reg_q,
    pos_k,
    reg_k,
    mask_n,
    table_ptr,
    stride_tb,
    scale,
    WINDOW: tl.constexpr,
    SHIFTED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """(BLOCK_M, BLOCK_N) log2-domain scores: (q k^T * scale + bias + seam mask) * log2 e; -inf on padded keys."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
    idx = pos_q[:, None] - pos_k[None, :] + (WINDOW - 1) * 2 * WINDOW  # (w-1)(2w-1) + (w-1)
    s += tl.load(table_ptr + idx * stride_tb).to(tl.float32)
    if SHIFTED:
        s += tl.where(reg_q[:, None] != reg_k[None, :], -100.0, 0.0)
    return tl.where(mask_n[None, :], s * 1.4426950408889634, float("-inf"))


@triton.jit
def _window_attention_fwd_kernel(
    qkv_ptr,  # (B, H, W, 3, heads, D), any strides
    table_ptr,  # ((2w-1)^2, heads) relative position bias table
    out_ptr,  # (B, H, W, heads, D) contiguous
    lse_ptr,  # (B, H, W, heads) contiguous fp32, log2-domain log-sum-exp of each query row
    stride_qkv_b,
    stride_qkv_h,
    stride_qkv_w,
    stride_qkv_s,
    stride_qkv_n,
    stride_qkv_d,
    stride_tb,
    stride_tn,
    height,
    width,
    n_heads,
    n_win_w,
    n_win,
    shift,
    scale,
    WINDOW: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SHIFTED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    N: tl.constexpr = WINDOW * WINDOW
    b, head, win_row, win_col = _program(tl.program_id(0), n_heads, n_win, n_win_w)
    qkv_ptr += b * stride_qkv_b + head * stride_qkv_n
    table_ptr += head * stride_tn
    offs_d = tl.arange(0, HEAD_DIM)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < N
    pos_q, row, col, reg_q = _tokens(offs_m, win_row, win_col, height, width, shift, WINDOW, SHIFTED)
    q_ptrs = qkv_ptr + (row * stride_qkv_h + col * stride_qkv_w)[:, None] + offs_d[None, :] * stride_qkv_d
    q = tl.load(q_ptrs)

    # Online softmax over the window's key tiles (flash-attention style), statistics and accumulator in fp32.
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        pos_k, row_k, col_k, reg_k = _tokens(offs_n, win_row, win_col, height, width, shift, WINDOW, SHIFTED)
        kv_ptrs = qkv_ptr + (row_k * stride_qkv_h + col_k * stride_qkv_w)[:, None] + offs_d[None, :] * stride_qkv_d
        k = tl.load(kv_ptrs + stride_qkv_s)
        v = tl.load(kv_ptrs + 2 * stride_qkv_s)
        s = _scores(
            q, k, pos_q, reg_q, pos_k, reg_k, mask_n, table_ptr, stride_tb, scale, WINDOW, SHIFTED, DOT_PRECISION
        )
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every tile's first key is real
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    tok = ((b * height + row) * width + col) * n_heads + head  # index into (B, H, W, heads)
    out = (acc / l_i[:, None]).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + tok[:, None] * HEAD_DIM + offs_d[None, :], out, mask=mask_m[:, None])
    tl.store(lse_ptr + tok, m_i + tl.log2(l_i), mask=mask_m)


@triton.jit
def _load_grad_rows(
    dout_ptr, lse_ptr, delta_ptr, b, head, row, col, mask, height, width, n_heads, HEAD_DIM: tl.constexpr
):
    """dO rows, log-sum-exp and delta = rowsum(dO * O) of query tokens at original positions (row, col)."""
    tok = ((b * height + row) * width + col) * n_heads + head
    do = tl.load(dout_ptr + tok[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :], mask=mask[:, None], other=0.0)
    return do, tl.load(lse_ptr + tok, mask=mask, other=0.0), tl.load(delta_ptr + tok, mask=mask, other=0.0)


@triton.jit
def _window_attention_bwd_dkdv_kernel(
    qkv_ptr,  # (B, H, W, 3, heads, D), any strides
    table_ptr,  # ((2w-1)^2, heads)
    dout_ptr,  # (B, H, W, heads, D) contiguous
    lse_ptr,  # (B, H, W, heads) fp32, from the forward
    delta_ptr,  # (B, H, W, heads) fp32, rowsum(dout * out)
    dqkv_ptr,  # (B, H, W, 3, heads, D) contiguous; this kernel writes the k and v slices
    stride_qkv_b,
    stride_qkv_h,
    stride_qkv_w,
    stride_qkv_s,
    stride_qkv_n,
    stride_qkv_d,
    stride_tb,
    stride_tn,
    height,
    width,
    n_heads,
    n_win_w,
    n_win,
    shift,
    scale,
    WINDOW: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SHIFTED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # One program per key tile: dK and dV accumulate over the window's query tiles in registers.
    N: tl.constexpr = WINDOW * WINDOW
    b, head, win_row, win_col = _program(tl.program_id(0), n_heads, n_win, n_win_w)
    qkv_ptr += b * stride_qkv_b + head * stride_qkv_n
    table_ptr += head * stride_tn
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    pos_k, row_k, col_k, reg_k = _tokens(offs_n, win_row, win_col, height, width, shift, WINDOW, SHIFTED)
    kv_ptrs = qkv_ptr + (row_k * stride_qkv_h + col_k * stride_qkv_w)[:, None] + offs_d[None, :] * stride_qkv_d
    k = tl.load(kv_ptrs + stride_qkv_s)
    v = tl.load(kv_ptrs + 2 * stride_qkv_s)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for start_m in range(0, N, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mask_m = offs_m < N
        pos_q, row, col, reg_q = _tokens(offs_m, win_row, win_col, height, width, shift, WINDOW, SHIFTED)
        q_ptrs = qkv_ptr + (row * stride_qkv_h + col * stride_qkv_w)[:, None] + offs_d[None, :] * stride_qkv_d
        q = tl.load(q_ptrs)
        do, lse, delta = _load_grad_rows(
            dout_ptr, lse_ptr, delta_ptr, b, head, row, col, mask_m, height, width, n_heads, HEAD_DIM
        )
        s = _scores(
            q, k, pos_q, reg_q, pos_k, reg_k, mask_n, table_ptr, stride_tb, scale, WINDOW, SHIFTED, DOT_PRECISION
        )
        p = tl.exp2(s - lse[:, None])  # padded query rows have dO = q = 0 and contribute nothing
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)

    tok = (((b * height + row_k) * width + col_k) * 3 * n_heads + head) * HEAD_DIM  # k slice of (B, H, W, 3, heads, D)
    d_ptrs = dqkv_ptr + tok[:, None] + offs_d[None, :]
    tl.store(d_ptrs + n_heads * HEAD_DIM, (dk * scale).to(dqkv_ptr.dtype.element_ty), mask=mask_n[:, None])
    tl.store(d_ptrs + 2 * n_heads * HEAD_DIM, dv.to(dqkv_ptr.dtype.element_ty), mask=mask_n[:, None])


@triton.jit
def _window_attention_bwd_dq_kernel(
    qkv_ptr,  # (B, H, W, 3, heads, D), any strides
    table_ptr,  # ((2w-1)^2, heads)
    dout_ptr,  # (B, H, W, heads, D) contiguous
    lse_ptr,  # (B, H, W, heads) fp32, from the forward
    delta_ptr,  # (B, H, W, heads) fp32, rowsum(dout * out)
    dqkv_ptr,  # (B, H, W, 3, heads, D) contiguous; this kernel writes the q slice
    stride_qkv_b,
    stride_qkv_h,
    stride_qkv_w,
    stride_qkv_s,
    stride_qkv_n,
    stride_qkv_d,
    stride_tb,
    stride_tn,
    height,
    width,
    n_heads,
    n_win_w,
    n_win,
    shift,
    scale,
    WINDOW: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SHIFTED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # One program per query tile: dQ accumulates over the window's key tiles in registers.
    N: tl.constexpr = WINDOW * WINDOW
    b, head, win_row, win_col = _program(tl.program_id(0), n_heads, n_win, n_win_w)
    qkv_ptr += b * stride_qkv_b + head * stride_qkv_n
    table_ptr += head * stride_tn
    offs_d = tl.arange(0, HEAD_DIM)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < N
    pos_q, row, col, reg_q = _tokens(offs_m, win_row, win_col, height, width, shift, WINDOW, SHIFTED)
    q_ptrs = qkv_ptr + (row * stride_qkv_h + col * stride_qkv_w)[:, None] + offs_d[None, :] * stride_qkv_d
    q = tl.load(q_ptrs)
    do, lse, delta = _load_grad_rows(
        dout_ptr, lse_ptr, delta_ptr, b, head, row, col, mask_m, height, width, n_heads, HEAD_DIM
    )
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        pos_k, row_k, col_k, reg_k = _tokens(offs_n, win_row, win_col, height, width, shift, WINDOW, SHIFTED)
        kv_ptrs = qkv_ptr + (row_k * stride_qkv_h + col_k * stride_qkv_w)[:, None] + offs_d[None, :] * stride_qkv_d
        k = tl.load(kv_ptrs + stride_qkv_s)
        v = tl.load(kv_ptrs + 2 * stride_qkv_s)
        s = _scores(
            q, k, pos_q, reg_q, pos_k, reg_k, mask_n, table_ptr, stride_tb, scale, WINDOW, SHIFTED, DOT_PRECISION
        )
        p = tl.exp2(s - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)

    tok = ((b * height + row) * width + col) * 3 * n_heads + head  # q slice of (B, H, W, 3, heads, D)
    tl.store(
        dqkv_ptr + tok[:, None] * HEAD_DIM + offs_d[None, :],
        (dq * scale).to(dqkv_ptr.dtype.element_ty),
        mask=mask_m[:, None],
    )


@triton.jit
def _window_attention_bwd_dbias_kernel(
    qkv_ptr,  # (B, H, W, 3, heads, D), any strides
    table_ptr,  # ((2w-1)^2, heads)
    dout_ptr,  # (B, H, W, heads, D) contiguous
    lse_ptr,  # (B, H, W, heads) fp32, from the forward
    delta_ptr,  # (B, H, W, heads) fp32, rowsum(dout * out)
    dscore_ptr,  # (G, heads, N, N) fp32: dS summed over the windows of group g (windows g, g + G, ...)
    stride_qkv_b,
    stride_qkv_h,
    stride_qkv_w,
    stride_qkv_s,
    stride_qkv_n,
    stride_qkv_d,
    stride_tb,
    stride_tn,
    height,
    width,
    n_heads,
    n_win_w,
    n_win,
    n_windows,
    shift,
    scale,
    WINDOW: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SHIFTED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # One program per (score tile, head, window group); the tile's dS sums over the group's windows in registers
    # in a fixed order, so the bias gradient is deterministic without atomics.
    N: tl.constexpr = WINDOW * WINDOW
    N_TILES_N: tl.constexpr = (N + BLOCK_N - 1) // BLOCK_N
    head = tl.program_id(1)
    group = tl.program_id(2)
    offs_m = tl.program_id(0) // N_TILES_N * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(0) % N_TILES_N * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < N
    mask_n = offs_n < N
    offs_d = tl.arange(0, HEAD_DIM)
    table_ptr += head * stride_tn
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for bw in range(group, n_windows, tl.num_programs(2)):
        b, _, win_row, win_col = _program(bw * n_heads + head, n_heads, n_win, n_win_w)
        base = qkv_ptr + b * stride_qkv_b + head * stride_qkv_n
        pos_q, row, col, reg_q = _tokens(offs_m, win_row, win_col, height, width, shift, WINDOW, SHIFTED)
        pos_k, row_k, col_k, reg_k = _tokens(offs_n, win_row, win_col, height, width, shift, WINDOW, SHIFTED)
        q = tl.load(base + (row * stride_qkv_h + col * stride_qkv_w)[:, None] + offs_d[None, :] * stride_qkv_d)
        kv_ptrs = base + (row_k * stride_qkv_h + col_k * stride_qkv_w)[:, None] + offs_d[None, :] * stride_qkv_d
        k = tl.load(kv_ptrs + stride_qkv_s)
        v = tl.load(kv_ptrs + 2 * stride_qkv_s)
        do, lse, delta = _load_grad_rows(
            dout_ptr, lse_ptr, delta_ptr, b, head, row, col, mask_m, height, width, n_heads, HEAD_DIM
        )
        s = _scores(
            q, k, pos_q, reg_q, pos_k, reg_k, mask_n, table_ptr, stride_tb, scale, WINDOW, SHIFTED, DOT_PRECISION
        )
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        acc += tl.exp2(s - lse[:, None]) * (dp - delta[:, None])

    out = dscore_ptr + (group * n_heads + head) * N * N + offs_m[:, None] * N + offs_n[None, :]
    tl.store(out, acc, mask=mask_m[:, None] & mask_n[None, :])
