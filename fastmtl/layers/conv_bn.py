"""Conv -> BatchNorm pairs and the one BN fold of the library.

:func:`fold_bn` is the arithmetic (eval-mode BN as a per-channel affine map folded into the conv's weight and
bias); :func:`fold_conv_bn` applies it in place (``fastmtl.inference.optimize``), and :meth:`ConvBN.folded` returns it
without touching the module (the DFE's Triton path, on every call, differentiably). Blocks that compute
``bn(conv(x))`` with nothing in between declare the pairs in a ``conv_bn_pairs()`` method (attribute names of the
conv and its BN); consecutive Conv2d -> BatchNorm2d children of an ``nn.Sequential`` (``ConvBN``, ResNet
downsamples) are pairs by construction.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def uses_batch_stats(bn: nn.Module) -> bool:
    """Whether ``bn`` normalises with batch statistics (a training-mode BN or one without running statistics)."""
    return isinstance(bn, nn.BatchNorm2d) and (bn.training or bn.running_mean is None)


def foldable(conv: nn.Module, bn: nn.Module) -> bool:
    """Whether ``bn`` is an eval-mode BatchNorm2d with running statistics matching plain Conv2d ``conv``."""
    return (
        type(conv) is nn.Conv2d
        and isinstance(bn, nn.BatchNorm2d)
        and not uses_batch_stats(bn)
        and bn.num_features == conv.out_channels
    )


def fold_bn(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight', bias')`` in ``dtype`` with ``bn(conv(x, weight, bias)) == conv(x, weight', bias')`` (eval mode).

    Differentiable in the weight and the BN's affine parameters.

    Raises:
        ValueError: the BN is in training mode, has no running statistics, or does not match the weight.
    """
    if bn.training or bn.running_mean is None or bn.running_var is None:
        raise ValueError("only an eval-mode BatchNorm2d with running statistics can be folded")
    if bn.num_features != weight.shape[0]:
        raise ValueError(f"BatchNorm2d({bn.num_features}) does not match a conv with {weight.shape[0]} outputs")
    scale = torch.rsqrt(bn.running_var.to(dtype) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(dtype)
    shift = -bn.running_mean.to(dtype) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(dtype)
    folded = weight.to(dtype) * scale.reshape(-1, *([1] * (weight.ndim - 1)))  # (C_out, C_in/g, k, k)
    return folded, shift if bias is None else bias.to(dtype) * scale + shift


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Folds eval-mode ``bn`` into ``conv`` in place, so that ``conv(x) == bn(conv_before(x))``.

    The arithmetic runs in float64 and is stored back in the convolution's dtype; a bias is added if needed.

    Raises:
        ValueError: the BN is in training mode, has no running statistics, or does not match the conv.
    """
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm2d({bn.num_features}) does not match Conv2d(out_channels={conv.out_channels})")
    with torch.no_grad():
        weight, bias = fold_bn(conv.weight, conv.bias, bn)
        conv.weight.copy_(weight.to(conv.weight.dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(bias.to(conv.weight), requires_grad=conv.weight.requires_grad)
        else:
            conv.bias.copy_(bias.to(conv.bias.dtype))


class ConvBN(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d; ``padding = dilation * (k // 2)`` keeps the size.

    After :func:`inference.optimize.fold_batchnorms` the BN is an ``nn.Identity`` and the conv carries the folded
    weight and bias; :meth:`folded` serves both states.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, dilation: int = 1) -> None:
        pad = dilation * (kernel_size // 2)
        conv = nn.Conv2d(cin, cout, kernel_size, padding=pad, dilation=dilation, bias=False)
        super().__init__(OrderedDict(conv=conv, bn=nn.BatchNorm2d(cout)))

    @property
    def rate(self) -> int:
        """Dilation of the conv, 0 for a 1x1 conv (the DFE kernels' convention)."""
        return 0 if self.conv.kernel_size[0] == 1 else self.conv.dilation[0]

    def uses_batch_stats(self) -> bool:
        return uses_batch_stats(self.bn)

    def folded(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` in ``dtype`` of the conv with the eval-mode BN folded in (zeros for a missing bias)."""
        conv = self.conv
        if isinstance(self.bn, nn.BatchNorm2d):
            return fold_bn(conv.weight, conv.bias, self.bn, dtype)
        bias = conv.bias.to(dtype) if conv.bias is not None else conv.weight.new_zeros(conv.out_channels, dtype=dtype)
        return conv.weight.to(dtype), bias
