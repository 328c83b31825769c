"""Fused window attention (fastmtl.kernels.window_attention) against window_attention_ref.

Without CUDA the kernels run on CPU under the Triton interpreter (``TRITON_INTERPRET=1``, set by
tests/kernels/conftest.py before any kernel module is imported) with small fp32 shapes; with CUDA the same tests
run the compiled kernels on the GPU, and the ``gpu``-marked tests check fp16/bf16 on the model's shapes.
"""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmtl.kernels._utils import interpreted
from fastmtl.kernels.window_attention import ops, table_grad, window_attention
from fastmtl.kernels.window_attention.ref import window_attention_bwd_ref, window_attention_fwd_ref
from fastmtl.layers.swin import (
    SwinBlock,
    relative_position_index,
    seam_mask,
    window_attention_ref,
    window_partition,
)
from fastmtl.models.launches import window_attention_shapes

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.triton
if DEVICE == "cpu" and not interpreted():
    pytest.skip("kernel module was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)


def _inputs(b, height, width, window, heads, d, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b, height, width, 3, heads, d, generator=gen).to(DEVICE, dtype)
    table = (0.5 * torch.randn((2 * window - 1) ** 2, heads, generator=gen)).to(DEVICE)
    return qkv.requires_grad_(), table.requires_grad_()


def _check_against_reference(assert_close, b, height, width, window, shift, heads, d, seed=0):
    qkv, table = _inputs(b, height, width, window, heads, d, seed)
    out = window_attention(qkv, table, window=window, shift=shift)
    ref = window_attention_ref(qkv, table, window, shift)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, (qkv, table), grad)
    want = torch.autograd.grad(ref, (qkv, table), grad)
    assert_close(out, ref)
    for g, r in zip(got, want, strict=True):
        assert_close(g, r)


@pytest.mark.parametrize(
    "b, height, width, window, shift, heads, d",
    [
        (1, 8, 8, 4, 0, 1, 16),  # plain windows
        (1, 8, 8, 4, 2, 2, 16),  # shifted
        (2, 12, 12, 6, 3, 2, 32),  # N = 36: a partial tile, batch 2
        (1, 9, 9, 3, 1, 1, 16),  # N = 9
        (1, 10, 10, 5, 2, 2, 16),  # N = 25, shifted
        (1, 14, 14, 7, 3, 1, 16),  # N = 49 as in Swin, shifted
        (1, 7, 7, 7, 0, 2, 32),  # one global window (the last stage)
        (1, 8, 12, 4, 2, 1, 16),  # non-square map
    ],
)
def test_matches_reference(assert_close, b, height, width, window, shift, heads, d):
    _check_against_reference(assert_close, b, height, width, window, shift, heads, d)


@pytest.mark.parametrize("window, shift, block_m, block_n", [(6, 3, 16, 16), (5, 0, 16, 32), (4, 2, 32, 16)])
def test_launchers_with_several_tiles(assert_close, window, shift, block_m, block_n):
    """Small tiles so a window spans several query and key tiles, the last one partial."""
    qkv, table = _inputs(1, 2 * window, 2 * window, window, 2, 16, seed=1)
    qkv, table = qkv.detach(), table.detach()
    scale = 0.3
    out, lse = ops.forward(qkv, table, window, shift, scale, block_m, block_n)
    ref_out, ref_lse = window_attention_fwd_ref(qkv, table, window, shift, scale)
    assert_close(out, ref_out)
    assert_close(lse, ref_lse)
    dout = torch.randn_like(out)
    got = ops.backward(dout, qkv, table, out, lse, window, shift, scale, block_m, block_n)
    want = window_attention_bwd_ref(dout, qkv, table, window, shift, scale)
    for g, r in zip(got, want, strict=True):
        assert_close(g, r)


def test_strided_qkv(assert_close):
    """q, k, v are read through arbitrary strides: here a (B, H, W, heads, 3, d) buffer viewed as (..., 3, heads, d)."""
    qkv, table = _inputs(1, 8, 8, 4, 2, 16, seed=2)
    qkv = qkv.detach().transpose(3, 4).contiguous().transpose(3, 4).requires_grad_()
    assert not qkv.is_contiguous()
    out = window_attention(qkv, table, window=4, shift=2)
    ref = window_attention_ref(qkv, table, 4, 2)
    assert_close(out, ref)
    assert_close(torch.autograd.grad(out.sum(), qkv)[0], torch.autograd.grad(ref.sum(), qkv)[0])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    window=st.integers(2, 6),
    n_win=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    shift_frac=st.floats(0, 0.99),
    heads=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_fuzz(assert_close, window, n_win, shift_frac, heads, seed):
    shift = int(shift_frac * window)
    _check_against_reference(assert_close, 1, n_win[0] * window, n_win[1] * window, window, shift, heads, 16, seed)


def _kernel_tokens(t, win_row, win_col, height, width, shift, window):
    """Python mirror of kernels._tokens: (bias coordinate, map row, map col, region id) of tokens t."""
    t = t.clamp(max=window * window - 1)
    r, c = t // window, t % window
    rolled_r, rolled_c = win_row * window + r, win_col * window + c
    region = torch.zeros_like(t)
    if shift:
        band_r = (rolled_r >= height - window).long() + (rolled_r >= height - shift).long()
        band_c = (rolled_c >= width - window).long() + (rolled_c >= width - shift).long()
        region = band_r * 3 + band_c
    return r * (2 * window - 1) + c, (rolled_r + shift) % height, (rolled_c + shift) % width, region


@pytest.mark.parametrize("height, width, window, shift", [(8, 8, 4, 2), (12, 6, 3, 1), (14, 21, 7, 3), (6, 6, 6, 0)])
def test_index_arithmetic_matches_roll_partition_mask(height, width, window, shift):
    """The kernel's shift, partition, seam mask and bias index equal torch.roll + window_partition + seam_mask."""
    n, n_win_w = window * window, width // window
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    coords = torch.roll(torch.stack((rows, cols), -1)[None], (-shift, -shift), (1, 2))
    windows = window_partition(coords, window)  # (nW, N, 2) original positions of each window's tokens
    mask = seam_mask(height, width, window, shift) if shift else torch.zeros(len(windows), n, n)
    t = torch.arange(n + 5)  # 5 padded tokens, clamped by the kernel
    for win in range(len(windows)):
        pos, row, col, region = _kernel_tokens(t, win // n_win_w, win % n_win_w, height, width, shift, window)
        assert torch.equal(torch.stack((row, col), -1)[:n], windows[win])
        assert torch.equal((region[:n, None] != region[None, :n]).float() * -100.0, mask[win])
        index = pos[:n, None] - pos[None, :n] + (window - 1) * 2 * window
        assert torch.equal(index, relative_position_index(window))
        assert int(index.max()) < (2 * window - 1) ** 2 and int(pos.max()) == int(pos[n - 1])


@pytest.mark.parametrize("window", [1, 3, 4])
def test_table_grad_equals_scatter_add(window):
    n, heads = window * window, 2
    dscore = torch.randn(heads, n, n, dtype=torch.float64)
    want = torch.zeros((2 * window - 1) ** 2, heads, dtype=torch.float64)
    want.index_add_(0, relative_position_index(window).view(-1), dscore.permute(1, 2, 0).reshape(n * n, heads))
    torch.testing.assert_close(table_grad(dscore, window), want, atol=1e-12, rtol=0)


def test_pytorch_path_of_the_op(assert_close):
    """The op's own CPU path (used when the interpreter is off) against autograd through the reference."""
    qkv, table = _inputs(2, 8, 8, 4, 2, 16, seed=3)
    qkv, table = qkv.cpu(), table.cpu()
    out, lse = window_attention_fwd_ref(qkv, table, 4, 2, 0.25)
    ref = window_attention_ref(qkv, table, 4, 2, scale=0.25)
    dout = torch.randn_like(ref)
    got = window_attention_bwd_ref(dout, qkv.detach(), table.detach(), 4, 2, 0.25)
    want = torch.autograd.grad(ref, (qkv, table), dout)
    for g, r in zip((out, *got), (ref, *want), strict=True):
        assert_close(g, r)


def test_opcheck():
    qkv, table = _inputs(1, 8, 8, 4, 2, 16, seed=4)
    torch.library.opcheck(torch.ops.fastmtl.window_attention_fwd.default, (qkv, table, 4, 2, 0.25))
    out, lse = torch.ops.fastmtl.window_attention_fwd(qkv.detach(), table.detach(), 4, 2, 0.25)
    args = (torch.randn_like(out), qkv.detach(), table.detach(), out, lse, 4, 2, 0.25)
    torch.library.opcheck(torch.ops.fastmtl.window_attention_bwd.default, args)


def test_swin_block_compiles_fullgraph_and_keeps_state_dict():
    torch.manual_seed(0)
    block = SwinBlock(32, 2, 4, shift=2, kernels="triton").to(DEVICE)
    reference = SwinBlock(32, 2, 4, shift=2, kernels="reference").to(DEVICE)
    assert block.state_dict().keys() == reference.state_dict().keys()
    reference.load_state_dict(block.state_dict())
    x = torch.randn(1, 8, 8, 32, device=DEVICE)
    assert torch._dynamo.explain(block)(x).graph_break_count == 0
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager" if DEVICE == "cpu" else "inductor")
    y = compiled(x.requires_grad_())
    (grad,) = torch.autograd.grad(y.sum(), x)
    y_ref = reference(x)
    (grad_ref,) = torch.autograd.grad(y_ref.sum(), x)
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grad, grad_ref, atol=1e-4, rtol=1e-4)


_NO_INTERPRETER = """
import torch
from fastmtl.kernels._utils import interpreted
from fastmtl.kernels.window_attention import ops, window_attention
from fastmtl.layers.swin import SwinBlock, window_attention_ref
assert not interpreted()
qkv, table = torch.randn(1, 8, 8, 3, 2, 16, requires_grad=True), torch.randn(49, 2, requires_grad=True)
torch.library.opcheck(torch.ops.fastmtl.window_attention_fwd.default, (qkv, table, 4, 2, 0.25))
torch.testing.assert_close(window_attention(qkv, table, window=4, shift=2), window_attention_ref(qkv, table, 4, 2))
block = SwinBlock(32, 2, 4, shift=2, kernels="triton")
x = torch.randn(1, 8, 8, 32)
torch.testing.assert_close(torch.compile(block, fullgraph=True, backend="aot_eager")(x), block(x))
"""


@pytest.mark.slow
def test_triton_op_path_without_interpreter():
    """In a fresh process without the interpreter the ops are ``triton_op``s whose CPU path is the reference."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", _NO_INTERPRETER], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(shape=(1, 8, 8, 3, 2, 16), window=3, shift=0), ValueError),  # map not a multiple of the window
        (dict(shape=(1, 8, 8, 3, 2, 16), window=4, shift=4), ValueError),  # shift out of range
        (dict(shape=(1, 8, 8, 3, 2, 24), window=4, shift=0), ValueError),  # head dim
        (dict(shape=(1, 8, 8, 2, 16), window=4, shift=0), ValueError),  # not (B, H, W, 3, heads, d)
        (dict(shape=(1, 8, 8, 3, 2, 16), window=4, shift=0, dtype=torch.float64), TypeError),
    ],
)
def test_validation(kwargs, error):
    qkv = torch.zeros(kwargs["shape"], dtype=kwargs.get("dtype", torch.float32))
    table = torch.zeros((2 * kwargs["window"] - 1) ** 2, 2)
    with pytest.raises(error):
        window_attention(qkv, table, window=kwargs["window"], shift=kwargs["shift"])


def _errors(qkv, table, window, shift, grad, fn):
    """Output, dqkv and dtable of ``fn`` (fp32 copies) for the given upstream gradient."""
    qkv, table = qkv.detach().requires_grad_(), table.detach().requires_grad_()
    out = fn(qkv, table)
    return (out.float(), *(g.float() for g in torch.autograd.grad(out, (qkv, table), grad.to(out.dtype))))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", window_attention_shapes(), ids=lambda s: s.name)
def test_low_precision_within_twice_pytorch_error(shape, dtype):
    """Kernel error vs the fp32 reference <= 2x PyTorch's own same-dtype error, output and every gradient."""
    window, shift = shape.window, shape.window // 2 if shape.shifted else 0
    gen = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(2, shape.side, shape.side, 3, shape.heads, shape.head_dim, device="cuda", generator=gen)
    table = 0.5 * torch.randn((2 * window - 1) ** 2, shape.heads, device="cuda", generator=gen)
    grad = torch.randn(2, shape.side, shape.side, shape.heads * shape.head_dim, device="cuda", generator=gen)
    exact = _errors(qkv, table, window, shift, grad, lambda q, t: window_attention_ref(q, t, window, shift))
    low = (qkv.to(dtype), table.to(dtype))
    ours = _errors(*low, window, shift, grad, lambda q, t: window_attention(q, t, window=window, shift=shift))
    torch_low = _errors(*low, window, shift, grad, lambda q, t: window_attention_ref(q, t, window, shift))
    for name, e, o, t in zip(("out", "dqkv", "dtable"), exact, ours, torch_low, strict=True):
        err, torch_err = (o - e).abs().max().item(), (t - e).abs().max().item()
        assert err <= 2 * torch_err + 1e-6 * e.abs().max().item(), f"{name}: {err} vs PyTorch {torch_err}"


@pytest.mark.gpu
def test_backward_is_deterministic():
    qkv, table = _inputs(4, 56, 56, 14, 4, 32, seed=5, dtype=torch.float16)
    out = window_attention(qkv, table, window=14, shift=7)
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, (qkv, table), grad, retain_graph=True)
    second = torch.autograd.grad(out, (qkv, table), grad)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
