"""One switch for fast inference: BN folding, Triton kernels, channels_last, bf16 autocast and ``torch.compile``.

:func:`optimize_for_inference` deep-copies a model (the caller's module is never touched), puts it in eval mode
and applies, in order:

1. **Kernel backend** (``kernels``): ``"auto"`` picks the Triton kernels when the model sits on CUDA and Triton
   imports, the PyTorch reference otherwise (see :mod:`fastmtl.backend`).
2. **BN folding** (``fold_bn``): every eval-mode ``BatchNorm2d`` fed directly by a ``Conv2d`` (nothing in
   between) is folded into that convolution's weight and bias and replaced by ``nn.Identity``: the trunk stem,
   each BasicBlock's conv1/bn1, conv2/bn2 and downsample, every ``ConvBN`` of the DFE modules and each decoder
   block's conv/bn. BNs that no convolution feeds (the classification head's BN -> ReLU -> pool) stay.
   *DFE on Triton*: the fused DFE kernels fold BN on the fly and take bias-free convolutions, so the ConvBNs of a
   DFE that runs on Triton are left as they are (folding them would gain nothing and change the structure the
   kernels read). A DFE whose ConvBNs were folded is pinned to the reference backend; do not switch it to Triton
   afterwards with :func:`fastmtl.set_kernel_backend` (call :func:`optimize_for_inference` again instead).
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

from fastmtl.backend import check_backend, set_kernel_backend, use_triton
from fastmtl.layers.dfe import DFE, DFE3
from fastmtl.models.decoder import DecoderBlock
from fastmtl.models.resformer import BasicBlock, ResNet34Trunk
from fastmtl.output import MTLOutput

__all__ = ["InferenceModel", "count_batchnorms", "fold_batchnorms", "fold_conv_bn", "optimize_for_inference"]

CompileMode = Literal["default", "max-autotune"] | bool
AmpSpec = Literal["auto", "bf16", "fp16"] | bool | torch.dtype | None

# Modules whose forward computes ``bn(conv(x))`` for these attribute pairs, with nothing in between.
_CONV_BN_ATTRS: dict[type[nn.Module], tuple[tuple[str, str], ...]] = {
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    ResNet34Trunk: (("conv1", "bn1"),),
    DecoderBlock: (("conv", "bn"),),
}


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Folds eval-mode ``bn`` into ``conv`` in place, so that ``conv(x) == bn(conv_before(x))``.

    The arithmetic runs in float64 and is stored back in the convolution's dtype; a bias is added if needed.

    Raises:
        ValueError: the BN is in training mode, has no running statistics, or does not match the conv.
    """
    if bn.training or bn.running_mean is None or bn.running_var is None:
        raise ValueError("only an eval-mode BatchNorm2d with running statistics can be folded")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm2d({bn.num_features}) does not match Conv2d(out_channels={conv.out_channels})")
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.ndim - 1)))  # (C_out, C_in/g, k, k)
        bias = shift if conv.bias is None else conv.bias.double() * scale + shift
        conv.weight.copy_(weight.to(conv.weight.dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(bias.to(conv.weight), requires_grad=conv.weight.requires_grad)
        else:
            conv.bias.copy_(bias.to(conv.bias.dtype))


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and isinstance(bn, nn.BatchNorm2d)
        and not bn.training
        and bn.running_mean is not None
        and bn.num_features == conv.out_channels
    )


def _fold_sequential(seq: nn.Sequential) -> int:
    """Folds each Conv2d -> BatchNorm2d pair of consecutive children (downsample, ConvBN)."""
    names, folded = list(seq._modules), 0
    for first, second in zip(names, names[1:]):
        conv, bn = seq._modules[first], seq._modules[second]
        if _foldable(conv, bn):
            fold_conv_bn(conv, bn)
            seq._modules[second] = nn.Identity()
            folded += 1
    return folded


def _dfe_subtrees(model: nn.Module, keep_dfe: bool) -> set[int]:
    """Ids of the modules inside the DFEs whose ConvBNs must stay (those that run the Triton kernels)."""
    keep: set[int] = set()
    for module in model.modules():
        if isinstance(module, (DFE, DFE3)):
            if keep_dfe:
                keep.update(id(m) for m in module.modules())
            else:
                module.kernels = "reference"  # its ConvBNs are folded below: the Triton path reads unfolded BNs
    return keep


def fold_batchnorms(model: nn.Module, *, keep_dfe: bool = False) -> int:
    """Folds every BatchNorm2d that directly follows a Conv2d into it, in place; returns how many were folded.

    Args:
        model: a fastmtl model in eval mode.
        keep_dfe: leave the ConvBNs inside DFE modules untouched (their Triton path folds BN itself); otherwise
            they are folded and the DFEs are pinned to the reference backend.
    """
    skip, folded = _dfe_subtrees(model, keep_dfe), 0
    for module in list(model.modules()):
        if id(module) in skip:
            continue
        if isinstance(module, nn.Sequential):
            folded += _fold_sequential(module)
        for conv_name, bn_name in _CONV_BN_ATTRS.get(type(module), ()):
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            if _foldable(conv, bn):
                fold_conv_bn(conv, bn)
                setattr(module, bn_name, nn.Identity())
                folded += 1
    return folded


def count_batchnorms(model: nn.Module) -> int:
    """Number of ``BatchNorm2d`` modules in ``model``."""
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _amp_dtype(amp: AmpSpec, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if amp is None or amp is False:
        return None
    if amp is True or amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if isinstance(amp, torch.dtype):
        return amp
    raise ValueError(f"amp must be 'auto', 'bf16', 'fp16', a torch.dtype, True or False; got {amp!r}")


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
            :func:`fastmtl.engine.checkpoint.model_config` finds the config through it.
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
    kernels: str = "auto",
    amp: AmpSpec = "auto",
) -> InferenceModel:
    """Returns an eval-mode copy of ``model`` tuned for inference on the device it sits on.

    Args:
        model: a fastmtl model (any registered one); left unchanged.
        fold_bn: fold BatchNorm2d into the preceding convolutions (see the module docstring for the DFE rule).
        channels_last: weights and input in channels_last (NHWC) memory format.
        compile: False, ``"default"`` (or True) or ``"max-autotune"`` for ``torch.compile``.
        cuda_graphs: with ``compile``, capture CUDA graphs (fixed batch shape; ignored off CUDA).
        kernels: ``"auto"`` (Triton on CUDA when available), ``"triton"`` or ``"reference"``.
        amp: ``"auto"`` (bf16 on CUDA, none elsewhere), ``"bf16"``/True, ``"fp16"``, a dtype, or False.

    Returns:
        An :class:`InferenceModel` whose forward returns :class:`~fastmtl.output.MTLOutput` with fp32 logits.

    Raises:
        ValueError: an unknown ``kernels``, ``compile`` or ``amp`` value, or ``cuda_graphs`` without ``compile``.
    """
    device = _device_of(model)
    mode = _compile_mode(compile, cuda_graphs, device)
    amp_dtype = _amp_dtype(amp, device)
    triton = use_triton(check_backend(kernels), device.type == "cuda")
    net = copy.deepcopy(model).eval().requires_grad_(False)
    set_kernel_backend(net, "triton" if triton else "reference")
    if fold_bn:
        fold_batchnorms(net, keep_dfe=triton)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if mode is not None:
        net = torch.compile(net, mode=mode, dynamic=False)
    return InferenceModel(net, channels_last, amp_dtype, cuda_graphs=mode in ("reduce-overhead", "max-autotune"))
