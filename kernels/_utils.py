"""Helpers every op package shares: interpreter detection, op registration and the ``tl.dot`` precision.

Imports nothing of fastmtl above the kernels (and no Triton kernel): ``ref.py`` modules and the layers can use it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

# Read once, like ``@triton.jit`` does when it decides between compiled and interpreted kernels: under
# ``TRITON_INTERPRET=1`` (set before the kernels are imported) the kernels run on CPU tensors in the interpreter.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreted() -> bool:
    """Whether the kernels were built by the Triton interpreter (and so run on CPU tensors)."""
    return INTERPRET


def runs_kernels(x: torch.Tensor) -> bool:
    """CUDA tensors run the kernels; CPU tensors only under the interpreter (else the op's ``*_ref``)."""
    return x.is_cuda or INTERPRET


def register_op(name: str, fn: Callable, fake: Callable | None = None):
    """Registers ``fn`` as the ``torch.library`` op ``name`` (``"fastmtl::..."``) with its fake implementation.

    Compiled kernels: ``triton_op``, so Inductor sees the kernels inside; ``fake`` (shapes only, never launches a
    kernel) is registered when given, otherwise ``fn`` itself is traced under FakeTensorMode (``wrap_triton``
    launches nothing there). Under the interpreter ``wrap_triton`` cannot trace interpreted kernels, so the op is an
    opaque ``custom_op`` and needs ``fake``.
    """
    if INTERPRET:
        if fake is None:
            raise ValueError(f"{name}: an op registered under the Triton interpreter needs a fake implementation")
        op = torch.library.custom_op(name, fn, mutates_args=())
    else:
        from torch.library import triton_op

        op = triton_op(name, fn, mutates_args=())
        if fake is None:
            return op
    op.register_fake(fake)
    return op


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s ``input_precision`` for inputs of ``dtype``: IEEE fp32 (no TF32) for fp32, ignored for 16 bit."""
    return "ieee" if dtype == torch.float32 else "tf32"
