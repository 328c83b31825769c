"""One switch for fast inference: BN folding, Triton kernels, channels_last, bf16 autocast and ``torch.compile``.

:func:`optimize_for_inference` deep-copies a model (the caller's module is never touched), puts it in eval mode
and applies, in order:

1. **Kernel backend** (``kernels``): the model's own (``model.config.kernels``, set at construction) unless
   ``kernels`` names another, which the copy's ``set_backend`` records in its config; ``"auto"`` runs the Triton
   kernels when the model sits on CUDA and Triton imports, the PyTorch reference otherwise (see
   :mod:`fastmtl.backend`).
2. **BN folding** (``fold_bn``): every eval-mode ``BatchNorm2d`` fed directly by a ``Conv2d`` (nothing in
   between) is folded into that convolution's weight and bias and replaced by ``nn.Identity``: the trunk stem,
   each BasicBlock's conv1/bn1, conv2/bn2 and downsample, every ``ConvBN`` of the DFE modules and each decoder
   block's conv/bn. BNs that no convolution feeds (the classification head's BN -> ReLU -> pool) stay. The pairs
   are those the modules declare and the fold is the layers' one (:mod:`fastmtl.layers.conv_bn`); a DFE on Triton
   reads its folded ConvBNs the same way it folds unfolded ones on the fly, so any backend runs the result.
3. **channels_last** memory format for the weights and the input.
4. **Autocast** (``amp``): ``"auto"`` means bf16 on CUDA and fp32 elsewhere.
5. **torch.compile** (``compile``), optionally with CUDA graphs (``cuda_graphs``: mode ``"reduce-overhead"``,
   or ``"max-autotune"``, which captures graphs; meant for a fixed batch shape).

The result returns :class:`~fastmtl.output.MTLOutput` with fp32 logits. Its weights are folded: save checkpoints
from the original model, not from this one.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Literal

import torch
from torch import nn

from fastmtl.layers.conv_bn import fold_conv_bn, foldable
from fastmtl.models.base import set_kernel_backend
from fastmtl.options import check_backend
from fastmtl.output import MTLOutput
from fastmtl.runtime import amp_dtype

__all__ = [
    "InferenceModel",
    "count_batchnorms",
    "fold_batchnorms",
    "fold_conv_bn",
    "optimize_for_inference",
    "optimized",
]

CompileMode = Literal["default", "max-autotune"] | bool
AmpSpec = Literal["auto", "bf16", "fp16", "off"] | bool | torch.dtype | None


def _fold_sequential(seq: nn.Sequential) -> int:
    """Folds each Conv2d -> BatchNorm2d pair of consecutive children (downsample, ConvBN)."""
    names, folded = list(seq._modules), 0
    for first, second in zip(names, names[1:]):
        conv, bn = seq._modules[first], seq._modules[second]
        if foldable(conv, bn):
            fold_conv_bn(conv, bn)
            seq._modules[second] = nn.Identity()
            folded += 1
    return folded


def fold_batchnorms(model: nn.Module) -> int:
    """Folds every BatchNorm2d that directly follows a Conv2d into it, in place; returns how many were folded.

    The pairs are what the modules declare: consecutive children of an ``nn.Sequential`` (``ConvBN``, ResNet
    downsamples) and the ``conv_bn_pairs()`` of the blocks (:mod:`fastmtl.layers.conv_bn`). Training-mode BNs stay.
    """
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            folded += _fold_sequential(module)
        for conv_name, bn_name in module.conv_bn_pairs() if hasattr(module, "conv_bn_pairs") else ():
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            if foldable(conv, bn):
                fold_conv_bn(conv, bn)
                setattr(module, bn_name, nn.Identity())
                folded += 1
    return folded


def count_batchnorms(model: nn.Module) -> int:
    """Number of ``BatchNorm2d`` modules in ``model``."""
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _compile_mode(compile: CompileMode, cuda_graphs: bool, device: torch.device) -> str | None:
    """The ``torch.compile`` mode for the switches; None means no compilation."""
    if compile is False or compile is None:
        if cuda_graphs:
            raise ValueError("cuda_graphs=True needs compile='default' or 'max-autotune'")
        return None
    if compile is True:
        compile = "default"
    if compile not in ("default", "max-autotune"):
        raise ValueError(f"compile must be False, True, 'default' or 'max-autotune'; got {compile!r}")
    graphs = cuda_graphs and device.type == "cuda"  # CUDA graphs capture CUDA work only
    if compile == "default":
        return "reduce-overhead" if graphs else "default"
    return "max-autotune" if graphs else "max-autotune-no-cudagraphs"


class InferenceModel(nn.Module):
    """Wraps an optimised model: input memory format, autocast, fp32 outputs, CUDA-graph step marking.

    Args:
        module: the (folded, possibly compiled) model; named ``module`` so that
            :func:`fastmtl.checkpoint.store.model_config` finds the config through it.
        channels_last: convert the input to channels_last.
        amp_dtype: autocast dtype, or None for none.
        cuda_graphs: the compiled module replays CUDA graphs (outputs are copied out of the graph's pool).
    """

    def __init__(self, module: nn.Module, channels_last: bool, amp_dtype: torch.dtype | None, cuda_graphs: bool):
        super().__init__()
        self.module = module
        self.channels_last = channels_last
        self.amp_dtype = amp_dtype
        self.cuda_graphs = cuda_graphs

    def forward(self, x: torch.Tensor) -> MTLOutput:  # (B, C, H, W) -> MTLOutput of fp32 logits
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        amp = torch.autocast(x.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()
        with amp:
            out = self.module(x)
        # A CUDA-graph replay overwrites its outputs; copy them so they outlive the next call.
        return MTLOutput(*(None if t is None else t.to(torch.float32, copy=self.cuda_graphs) for t in out))


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def optimize_for_inference(
    model: nn.Module,
    *,
    fold_bn: bool = True,
    channels_last: bool = True,
    compile: CompileMode = False,
    cuda_graphs: bool = False,
    kernels: str | None = None,
    amp: AmpSpec = "auto",
) -> InferenceModel:
    """Returns an eval-mode copy of ``model`` tuned for inference on the device it sits on.

    Args:
        model: a fastmtl model (any registered one); left unchanged.
        fold_bn: fold BatchNorm2d into the preceding convolutions (see the module docstring for the DFE rule).
        channels_last: weights and input in channels_last (NHWC) memory format.
        compile: False, ``"default"`` (or True) or ``"max-autotune"`` for ``torch.compile``.
        cuda_graphs: with ``compile``, capture CUDA graphs (fixed batch shape; ignored off CUDA).
        kernels: None (the model's own backend), ``"auto"`` (Triton on CUDA when available), ``"triton"`` or
            ``"reference"``.
        amp: ``"auto"`` (bf16 on CUDA, none elsewhere), ``"bf16"``/True, ``"fp16"``, a dtype, or ``"off"``/False/
            None (:func:`fastmtl.runtime.amp_dtype`; None means ``"off"``).

    Returns:
        An :class:`InferenceModel` whose forward returns :class:`~fastmtl.output.MTLOutput` with fp32 logits.

    Raises:
        ValueError: an unknown ``kernels``, ``compile`` or ``amp`` value, or ``cuda_graphs`` without ``compile``.
    """
    device = _device_of(model)
    mode = _compile_mode(compile, cuda_graphs, device)
    dtype = amp_dtype("off" if amp is None else amp, device)  # the shared vocabulary; None keeps meaning "off"
    return optimized(model, dtype, mode=mode, fold_bn=fold_bn, channels_last=channels_last, kernels=kernels)


def optimized(
    model: nn.Module,
    dtype: torch.dtype | None,
    *,
    mode: str | None = None,
    fold_bn: bool = True,
    channels_last: bool = True,
    kernels: str | None = "auto",
) -> InferenceModel:
    """:func:`optimize_for_inference` with its switches decided: autocast ``dtype`` (None: fp32) and the
    ``torch.compile`` ``mode`` (None: not compiled); what an inference path's torch float build calls. ``kernels``
    None keeps the model's own backend; a deployment (``build``) takes ``"auto"`` (the best here)."""
    if kernels is not None:
        check_backend(kernels)
    net = copy.deepcopy(model).eval().requires_grad_(False)
    if kernels is not None:
        set_kernel_backend(net, kernels)
    if fold_bn:
        fold_batchnorms(net)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if mode is not None:
        net = torch.compile(net, mode=mode, dynamic=False)
    return InferenceModel(net, channels_last, dtype, cuda_graphs=mode in ("reduce-overhead", "max-autotune"))
