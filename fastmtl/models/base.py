"""The model contract every fastmtl model keeps: :class:`MTLModel`.

A model is built from a :class:`~fastmtl.config.ModelConfig` and keeps it as ``model.config`` (saved inside every
checkpoint); ``forward(x)`` checks the input (:meth:`MTLModel.check_input`: one clear TypeError or ValueError for a
numpy array, an integer tensor, a wrong shape, channel count or size), then runs ``forward_features`` (the encoder
levels) and ``forward_head`` (the decoder and the class head), and returns :class:`~fastmtl.output.MTLOutput`.
The kernel backend is set at construction from ``config.kernels`` and changed only by :meth:`MTLModel.set_backend`,
which updates the config as well, so a saved config says what ran.
"""

from __future__ import annotations

import abc
import dataclasses

import torch
from torch import nn

from fastmtl.backend import kernel_layers, set_layer_backends, use_triton
from fastmtl.config import ModelConfig
from fastmtl.models.launches import KernelShapes
from fastmtl.options import ENCODER_STRIDE, check_backend
from fastmtl.output import MTLOutput

__all__ = ["MTLModel", "set_kernel_backend"]


class MTLModel(nn.Module, abc.ABC):
    """Base class of the registered models: ``config``, the input rule, the forward split and the backend.

    Subclasses build their layers from ``config`` (kernel-backed layers with ``config.kernels``) and implement
    :meth:`forward_features` and :meth:`forward_head`.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"{type(self).__name__} is built from a fastmtl.ModelConfig, got {type(config).__name__}")
        self.config = config

    def input_step(self) -> int:
        """Input sides are multiples of this: the encoders' stride, 16 (a windowed model: its window layout's)."""
        return ENCODER_STRIDE

    def check_input(self, x: torch.Tensor) -> None:
        """Raises TypeError for anything but a floating-point tensor and ValueError for a shape the model cannot
        take (not (B, in_chans, H, W), or H, W not multiples of :meth:`input_step`), naming what was expected."""
        name, chans = type(self).__name__, self.config.in_chans
        if not isinstance(x, torch.Tensor):
            kind = f"{type(x).__module__}.{type(x).__qualname__}".removeprefix("builtins.")
            how = " (torch.from_numpy(x), channels first)" if type(x).__module__ == "numpy" else ""
            raise TypeError(f"{name} takes a float torch.Tensor (B, {chans}, H, W); got a {kind}{how}")
        if not x.is_floating_point():
            raise TypeError(f"{name} takes a float tensor (normalised as predict does: fastmtl.data.transforms."
                            f"normalize_image); got {x.dtype}")  # fmt: skip
        if x.ndim != 4 or x.shape[1] != chans:
            raise ValueError(f"{name} takes a (B, C, H, W) image batch with C = in_chans = {chans}; got shape "
                             f"{tuple(x.shape)}")  # fmt: skip
        step, (h, w) = self.input_step(), x.shape[-2:]
        if h % step or w % step:
            raise ValueError(self._size_message(h, w, step))

    def _size_message(self, h: int, w: int, step: int) -> str:
        return f"input size {h}x{w}: {type(self).__name__} takes H and W that are multiples of {step}"

    @abc.abstractmethod
    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder outputs e0..e3: (B, 64, H/2, W/2) ... (B, 512, H/16, W/16)."""

    @abc.abstractmethod
    def forward_head(self, feats: list[torch.Tensor]) -> MTLOutput:
        """The segmentation logits and the class logits from the encoder outputs."""

    def forward(self, x: torch.Tensor) -> MTLOutput:
        self.check_input(x)
        return self.forward_head(self.forward_features(x))

    def set_backend(self, kernels: str) -> MTLModel:
        """Switches every kernel-backed layer to ``kernels`` ("reference", "triton" or "auto") and records it in
        ``config.kernels``; returns the model."""
        set_layer_backends(self, check_backend(kernels))
        self.config = dataclasses.replace(self.config, kernels=kernels)
        return self

    def kernel_shapes(self, img_size: int | None = None) -> KernelShapes:
        """The launch shape of every kernel-backed layer on ``img_size`` inputs (default ``config.img_size``); none
        for a model without such layers."""
        return KernelShapes()

    def uses_triton(self, device: torch.device | str) -> bool:
        """Whether any layer runs its Triton kernels on a tensor on ``device``."""
        cuda = torch.device(device).type == "cuda"
        return bool(kernel_layers(self)) and use_triton(self.config.kernels, cuda)


def set_kernel_backend(model: nn.Module, name: str) -> nn.Module:
    """Sets the kernel backend of ``model`` in place and returns it: :meth:`MTLModel.set_backend` for a model
    (its config follows), the kernel-backed layers of any other module."""
    if isinstance(model, MTLModel):
        return model.set_backend(name)
    return set_layer_backends(model, name)
