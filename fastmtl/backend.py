"""Kernel backend selection: the pure PyTorch reference or the Triton kernels.

A layer's backend is fixed when it is built (from ``create_model(..., kernels=...)`` or the
:func:`kernel_backend` context manager active at construction) and can be changed afterwards with
:func:`set_kernel_backend`. ``"auto"`` means Triton on CUDA tensors when Triton is importable, the reference
everywhere else; the choice depends only on the input's device, so it is static under ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

from torch import nn

from fastmtl.options import check_backend

_default: contextvars.ContextVar[str] = contextvars.ContextVar("fastmtl_kernel_backend", default="auto")


def default_backend() -> str:
    """The backend that layers built now will use (``"auto"`` unless inside :func:`kernel_backend`)."""
    return _default.get()


@contextlib.contextmanager
def kernel_backend(name: str) -> Iterator[None]:
    """Layers constructed inside this block use backend ``name`` (``"reference"``, ``"triton"`` or ``"auto"``)."""
    token = _default.set(check_backend(name))
    try:
        yield
    finally:
        _default.reset(token)


@functools.cache
def triton_available() -> bool:
    """True when Triton imports (it ships with CUDA builds of PyTorch on Linux)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(backend: str, is_cuda: bool) -> bool:
    """Whether a layer with ``backend`` runs its Triton kernel on a tensor on CUDA (``is_cuda``) or not.

    ``"triton"`` on a CPU tensor runs the kernels too (useful under ``TRITON_INTERPRET=1``); the custom ops
    dispatch CPU tensors to the reference when the interpreter is off.
    """
    if backend == "reference":
        return False
    if backend == "triton":
        return True
    return is_cuda and triton_available()


def set_kernel_backend(model: nn.Module, name: str) -> nn.Module:
    """Sets the backend of every kernel-backed layer in ``model`` in place and returns the model."""
    check_backend(name)
    for module in model.modules():
        if hasattr(module, "kernels") and isinstance(module.kernels, str):
            module.kernels = name
    return model
