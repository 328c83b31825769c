"""Kernel backend selection: the pure PyTorch reference or the Triton kernels.

A model's backend is fixed when it is built (``create_model(..., kernels=...)``, or the :func:`kernel_backend`
context manager active at construction) and changed only by :meth:`fastmtl.models.base.MTLModel.set_backend`,
which switches every :class:`KernelLayer` and updates ``model.config.kernels``: the config always says what runs,
and every other part of fastmtl reads it from there. ``"auto"`` means Triton on CUDA tensors when Triton is
importable, the reference everywhere else; the choice depends only on the input's device, so it is static under
``torch.compile``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

import torch
from torch import nn

from fastmtl.options import check_backend

__all__ = [
    "KernelLayer",
    "default_backend",
    "kernel_backend",
    "kernel_layers",
    "set_layer_backends",
    "triton_available",
    "use_triton",
]

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


class KernelLayer(nn.Module):
    """A layer with a Triton path and a PyTorch reference (the DFEs, window attention); same state_dict on both.

    Args:
        kernels: ``"reference"``, ``"triton"`` or ``"auto"``; None takes :func:`default_backend`.
    """

    def __init__(self, kernels: str | None = None) -> None:
        super().__init__()
        self.kernels = check_backend(kernels or default_backend())

    def runs_triton(self, x: torch.Tensor) -> bool:
        """Whether this layer runs its Triton kernels on ``x`` (see :func:`use_triton`)."""
        return use_triton(self.kernels, x.is_cuda)


def kernel_layers(module: nn.Module) -> list[KernelLayer]:
    """The kernel-backed layers inside ``module`` (itself included)."""
    return [m for m in module.modules() if isinstance(m, KernelLayer)]


def set_layer_backends(module: nn.Module, name: str) -> nn.Module:
    """Sets the backend of every :class:`KernelLayer` in ``module`` in place and returns ``module``; a model's
    :meth:`~fastmtl.models.base.MTLModel.set_backend` calls it and updates its config too."""
    check_backend(name)
    for layer in kernel_layers(module):
        layer.kernels = name
    return module
