"""DFE kernels against the PyTorch reference: ops, dead-tap skipping, the DFE/DFE3 layers (eval and training),
compile and opcheck. On CPU the kernels run in the Triton interpreter (tests/kernels/conftest.py), so shapes stay
small; the ``gpu`` tests add fp16/bf16 and model-sized shapes."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fastmtl.inference.optimize import fold_batchnorms
from fastmtl.kernels import dfe as K
from fastmtl.kernels._utils import interpreted
from fastmtl.kernels.dfe.ref import spatial_attention_ref
from fastmtl.layers.dfe import DFE, DFE3

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.triton
if DEVICE == "cpu" and not interpreted():  # the CPU ops would run the reference: comparing it with itself
    pytest.skip("fastmtl.kernels.dfe was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)


@pytest.fixture(autouse=True)
def _no_tf32():
    """The fp32 kernels do not use TF32; neither may the cuDNN reference they are compared with."""
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        yield


def _fmt(x, channels_last):
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _grads(fn, inputs, grad_out):
    """Output and the gradient of every input of ``fn(*inputs)`` (inputs are detached copies)."""
    inputs = [t.detach().clone().requires_grad_() if isinstance(t, torch.Tensor) else t for t in inputs]
    out = fn(*inputs)
    grads = torch.autograd.grad(out, [t for t in inputs if isinstance(t, torch.Tensor)], grad_out, allow_unused=True)
    return out, grads


def _randomize_bn(module):
    """Non-trivial BN statistics and affine parameters, so that folding is exercised."""
    with torch.no_grad():
        for bn in (m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return module


def _pair(cls, channels, dilations, train, dtype=torch.float32):
    kernel = _randomize_bn(cls(channels, dilations, kernels="triton")).to(DEVICE, dtype).train(train)
    reference = copy.deepcopy(kernel)
    reference.kernels = "reference"
    return kernel, reference


# ------------------------------------------------------------------------------------------------------------- ops
def _op_cases(channels_last):
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(DEVICE)

    x, cat = _fmt(r(2, 5, 9, 11), channels_last), _fmt(r(2, 12, 9, 11), channels_last)
    return {  # name: (op, reference, the op schema's positional arguments)
        "branches": ("dfe_branches", K.dfe_branches_ref, (x, r(3, 9, 5, 4), r(12), [0, 2, 5], False, True)),
        "branches-sum": ("dfe_branches", K.dfe_branches_ref, (x, r(2, 9, 5, 4), r(4), [3, 1], True, False)),
        "merge": ("dfe_merge", K.dfe_merge_ref, (cat, x, r(9, 12, 4), r(1, 5, 4), r(4), True)),
        "merge-raw": ("dfe_merge", K.dfe_merge_ref, (cat, x, r(9, 12, 4), None, None, False)),
        "spatial-attention": ("spatial_attention", spatial_attention_ref, (x, r(1, 2, 7, 7))),
    }


def _public(op: str):
    """The public, keyword-only function of ``op`` called with the schema's positional arguments."""
    return {
        "dfe_branches": lambda x, w, b, rates, s, relu: K.dfe_branches(x, w, rates=rates, bias=b, sum_branches=s,
                                                                       relu=relu),
        "dfe_merge": lambda cat, x, w, sc, b, relu: K.dfe_merge(cat, x, w, shortcut=sc, bias=b, relu=relu),
        "spatial_attention": K.spatial_attention,
    }[op]  # fmt: skip


def test_the_public_ops_take_their_options_by_keyword():
    x, w = torch.randn(1, 4, 5, 5, device=DEVICE), torch.randn(1, 9, 4, 4, device=DEVICE)
    with pytest.raises(TypeError, match="positional argument"):
        K.dfe_branches(x, w, None, [1], False, False)
    with pytest.raises(TypeError, match="positional argument"):
        K.dfe_merge(torch.randn(1, 4, 5, 5, device=DEVICE), x, w[0], None, None, False)
    assert K.dfe_branches(x, w, rates=(1,)).shape == (1, 4, 5, 5)  # defaults: no bias, concatenated, no ReLU


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name", list(_op_cases(False)))
def test_op_matches_reference(name, channels_last, assert_close):
    op, ref, args = _op_cases(channels_last)[name]
    op = _public(op)
    out_shape = ref(*args).shape
    grad_out = torch.randn(out_shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    out, grads = _grads(op, args, grad_out)
    expected, expected_grads = _grads(ref, args, grad_out)
    assert_close(out, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        if want is None:  # an input the op ignores (merge without shortcut)
            assert got is None
        else:
            assert_close(got, want)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last or out.shape[1] == 1


@pytest.mark.parametrize("name", list(_op_cases(False)))
def test_opcheck(name):
    op, _, args = _op_cases(False)[name]
    _public(op)  # the ops register on first use
    args = tuple(t.requires_grad_() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in args)
    torch.library.opcheck(getattr(torch.ops.fastmtl, op).default, args)


def test_op_validation():
    x = torch.randn(1, 4, 5, 5, device=DEVICE)
    with pytest.raises(ValueError, match="rates"):
        K.dfe_branches(x, torch.randn(2, 9, 4, 4, device=DEVICE), rates=[1])
    with pytest.raises(TypeError, match="dtype"):
        K.dfe_branches(x, torch.randn(1, 9, 4, 4, device=DEVICE).double(), rates=[1])
    with pytest.raises(ValueError, match="weight"):
        K.spatial_attention(x, torch.randn(1, 2, 4, 4, device=DEVICE))


# ------------------------------------------------------------------------------------------------------- dead taps
@pytest.mark.parametrize(
    ("size", "rates", "sum_branches"), [((14, 14), [0, 6, 12, 18], False), ((9, 11), [2, 5, 7], True)]
)
def test_dead_taps_skipped(size, rates, sum_branches, assert_close):
    x = torch.randn(2, 16, *size, device=DEVICE)
    weight = torch.randn(len(rates), 9, 16, 16, device=DEVICE)
    out, counts = K.branch_tap_counts(x, weight, rates=rates, sum_branches=sum_branches)
    block_m = K.conv_config(16, 16, x.dtype)["BLOCK_M"]
    expected = K.live_tap_counts(2, *size, rates, block_m, sum_branches)
    assert counts.cpu().tolist() == expected.tolist()
    full = sum(1 if r == 0 else 9 for r in rates) - (len(rates) - 1) * sum_branches
    n_tiles = counts.numel() // (1 if sum_branches else len(rates))
    assert counts.sum().item() < n_tiles * full
    if size == (14, 14):  # dilation 18 on a 14x14 map: only the centre tap is ever live
        assert counts.view(-1, len(rates))[:, -1].tolist() == [1] * n_tiles
    assert_close(out, K.dfe_branches_ref(x, weight, None, rates, sum_branches), scale=10)  # |out| ~ 50


# ----------------------------------------------------------------------------------------------------------- layers
def _check_layer(kernel, reference, x, assert_close):
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(x)
    results = []
    for module in (kernel, reference):
        xi = x.detach().clone().requires_grad_()
        out = module(xi)
        out.backward(grad_out)
        results.append((out, xi.grad))
    (out, gx), (want, want_gx) = results
    assert_close(out, want)
    assert_close(gx, want_gx)
    for (name, p), q in zip(kernel.named_parameters(), reference.parameters(), strict=True):
        assert_close(p.grad, q.grad, msg=name)
    for (name, b), c in zip(kernel.named_buffers(), reference.buffers(), strict=True):
        torch.testing.assert_close(b, c, msg=name)  # running stats and num_batches_tracked follow BatchNorm2d


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("cls", [DFE, DFE3])
def test_layer_matches_reference(cls, train, channels_last, assert_close):
    kernel, reference = _pair(cls, 5, (2, 5), train)
    x = _fmt(torch.randn(2, 5, 9, 11, device=DEVICE), channels_last)
    _check_layer(kernel, reference, x, assert_close)


def test_layer_bottleneck_dilations(assert_close):
    """14x14 with the model's rates 6/12/18: most dilated taps are dead and skipped."""
    kernel, reference = _pair(DFE, 16, (6, 12, 18), train=False)
    _check_layer(kernel, reference, torch.randn(1, 16, 14, 14, device=DEVICE), assert_close)


@pytest.mark.parametrize("cls", [DFE, DFE3])
def test_folded_layer_runs_the_kernels(cls):
    """After ``fold_batchnorms`` (the library's one BN fold, in place) the Triton path reads the folded ConvBNs
    through the same ``ConvBN.folded`` and matches the unfolded reference."""
    kernel, reference = _pair(cls, 5, (2, 3), train=False)
    assert fold_batchnorms(kernel) == sum(isinstance(m, nn.BatchNorm2d) for m in reference.modules())
    x = torch.randn(1, 5, 9, 11, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(kernel(x), reference(x), atol=1e-5, rtol=1e-4)


@settings(max_examples=8, deadline=None)
@given(
    size=st.tuples(st.integers(1, 13), st.integers(1, 13)),
    channels=st.sampled_from([3, 5, 16]),
    dilations=st.lists(st.integers(1, 16), min_size=1, max_size=3),
    channels_last=st.booleans(),
    three_branch=st.booleans(),
)
def test_layer_fuzz(size, channels, dilations, channels_last, three_branch):
    kernel, reference = _pair(DFE3 if three_branch else DFE, channels, tuple(dilations), train=False)
    x = _fmt(torch.randn(1, channels, *size, device=DEVICE), channels_last)
    with torch.no_grad():
        torch.testing.assert_close(kernel(x), reference(x), atol=1e-5, rtol=1e-4)


def test_compile_fullgraph_train(assert_close):
    kernel, reference = _pair(DFE, 5, (2, 3), train=True)
    backend = "inductor" if DEVICE == "cuda" else "aot_eager"  # Inductor cannot run interpreted kernels
    compiled = torch.compile(kernel, fullgraph=True, backend=backend)
    _check_layer(compiled, reference, torch.randn(2, 5, 7, 9, device=DEVICE), assert_close)


# -------------------------------------------------------------------------------------------------------------- gpu
def _max_err(a, b):
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    ("channels", "side", "train"), [(64, 28, False), (512, 14, False), (128, 23, True), (3, 9, True)]
)
def test_low_precision_within_twice_torch_error(dtype, channels, side, train):
    """Error vs the fp32 reference at most twice PyTorch's own same-dtype error (output and input gradient)."""
    kernel, reference = _pair(DFE, channels, (6, 12, 18), train)
    x = torch.randn(2, channels, side, side, device=DEVICE)
    grad_out = torch.randn_like(x)
    want = _grads(copy.deepcopy(reference), [x], grad_out)
    torch_lp = _grads(copy.deepcopy(reference).to(dtype), [x.to(dtype)], grad_out.to(dtype))
    got = _grads(kernel.to(dtype), [x.to(dtype)], grad_out.to(dtype))
    atol = torch.finfo(dtype).eps  # floor for outputs PyTorch happens to get exact
    for g, t, w in ((got[0], torch_lp[0], want[0]), (got[1][0], torch_lp[1][0], want[1][0])):
        assert _max_err(g, w) <= 2 * _max_err(t, w) + atol
