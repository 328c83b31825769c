"""Triton kernels for the DFE module (SPEC.md §2): fused parallel branches, fused merge, fused spatial attention.

What runs where (eval mode, BN folded into the conv weights and a per-channel bias, all on the fly):

* ``fastmtl::dfe_branches``: ONE launch computes every parallel branch (1x1 and dilated 3x3s, rates at run time)
  as an implicit GEMM (``tl.dot``, fp32 accumulation) with the bias and ReLU in the epilogue, written straight
  into its channel slice of the concatenated ``(B, nb*C, H, W)`` output. The branch index is the fastest-varying
  program id, so the programs that share a pixel tile run side by side and read it from HBM once (L2 serves the
  others). ``sum_branches=True`` instead sums all branches into one ``C``-channel output inside each program:
  the folded three-branch DFE3, whose branch centre taps are pre-summed on the host (25 taps, not 27).
* Dead taps: a program skips every tap whose shifted pixel tile lies entirely in the zero padding (at 14x14 with
  dilation 18 only the centre tap survives). Same maths as the full conv up to summation order.
  :func:`live_tap_counts` predicts the taps each program executes; :func:`branch_tap_counts` reads them back
  from the kernel's debug counter.
* ``fastmtl::dfe_merge``: 3x3 conv over the concatenation + 1x1 shortcut on ``x`` + folded BNs + add + ReLU.
* ``fastmtl::spatial_attention``: a pooling kernel (channel mean and max, fp32) and a gate kernel (7x7 conv over
  the pooled maps, sigmoid, multiply), two small launches.

Layout: any strides (NCHW or channels_last); outputs keep the input's memory format. Kernel weight layout is
``(taps, C_in, C_out)`` with a 3x3 pattern's taps in row-major order; a rate-0 pattern (1x1 conv) reads tap 0.
Numerics: fp32 accumulation (``input_precision="ieee"`` for fp32 so no TF32), outputs stored in the input dtype.
Tiles: each launch autotunes over a few candidates (:func:`conv_configs`; ``fastmtl.kernels.autotune``), all
compiled without register spills for sm_90a ahead of time; the interpreter runs the first.

Training: BN in training mode needs batch statistics of the raw convolutions, which no single fused launch can
produce. The DFE layers (``fastmtl.layers.dfe``, which gather weights and fold BNs: the ops take tensors only) then
run the same conv kernels with no bias and no ReLU (raw convs), and call their own ``nn.BatchNorm2d`` modules on the
outputs, so running statistics (momentum, unbiased variance,
``num_batches_tracked``) follow PyTorch exactly. Backward: each op registers an analytic autograd formula made of
ATen ops (``convolution_backward`` per branch, closed-form spatial attention gradient), so gradients reach the
input, the conv weights and, through the differentiable folding, the BN affine parameters; cuDNN's backward is
already near roofline and a Triton backward would add three more kernels for little gain. The formulas are
traceable, so ``torch.compile`` sees one graph.

Deliberately unsupported: strides other than 1, groups, dilated merge convs, more than 8 branches or rates > 255
(the rates travel packed in one integer).

CPU tensors run the reference (``*_ref``) unless ``TRITON_INTERPRET=1`` (then the kernels run in the interpreter).

Anatomy (the same in every op package): ``kernels.py`` the ``@triton.jit`` code, ``ops.py`` the launchers, the
``torch.library`` ops with their fakes and autograd, ``ref.py`` the PyTorch references (no Triton), ``aot.py`` the
ahead-of-time compilation of every launch. The ops load on first use, so importing ``ref`` needs no Triton.
"""

from .ref import conv_weight_from_taps, dfe_branches_ref, dfe_merge_ref, spatial_attention_ref, taps_from_conv_weight

_OPS = ("branch_tap_counts", "conv_config", "conv_configs", "dfe_branches", "dfe_merge", "live_tap_counts",
        "spatial_attention")  # fmt: skip

__all__ = ["branch_tap_counts", "conv_config", "conv_configs", "conv_weight_from_taps", "dfe_branches",
           "dfe_branches_ref", "dfe_merge", "dfe_merge_ref", "live_tap_counts", "spatial_attention",
           "spatial_attention_ref", "taps_from_conv_weight"]  # fmt: skip


def __getattr__(name: str):
    """The ops import Triton and register themselves: only on first use."""
    if name in _OPS:
        from . import ops

        return getattr(ops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
