"""torch's own inference paths' pieces (:mod:`fastmtl.inference.build` builds the paths): a fixed-batch wrapper for
shape-specialised models (compiled graphs, OpenVINO), Inductor's freezing, and PT2E static int8 with torchao's x86
Inductor quantizer."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fastmtl.inference.optimize import optimized
from fastmtl.output import MTLOutput

__all__ = ["FixedBatch", "inductor_cpu", "quantize_int8"]


class FixedBatch(nn.Module):
    """Runs a shape-specialised model on any batch up to ``batch``: a short batch is zero-padded and the padding's
    outputs dropped, so the last batch of a job never recompiles."""

    def __init__(self, module: nn.Module, batch: int, unpack: Callable[[object], MTLOutput]) -> None:
        super().__init__()
        self.module, self.batch, self.unpack = module, batch, unpack

    def forward(self, x: torch.Tensor) -> MTLOutput:
        n = x.shape[0]
        if n > self.batch:
            return MTLOutput(*(torch.cat(ts) if ts[0] is not None else None
                               for ts in zip(*(self(c) for c in x.split(self.batch)))))  # fmt: skip
        if n < self.batch:
            x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, self.batch - n))
        out = self.unpack(self.module(x))
        return MTLOutput(*(None if t is None else t[:n].float() for t in out))


@contextlib.contextmanager
def inductor_cpu() -> Iterator[None]:
    """Inductor's freezing on (it must be on when the graph compiles, i.e. at the first call)."""
    import torch._inductor.config as inductor

    with inductor.patch(freezing=True):
        yield


def quantize_int8(model: nn.Module, calibration: list[torch.Tensor]) -> nn.Module:
    """PT2E static int8 (x86 Inductor quantizer) of ``model`` exported at the calibration batch shape."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    net = optimized(model, None, fold_bn=False, channels_last=False).module
    _unshare_activations(net)
    graph = torch.export.export(net, (calibration[0],)).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
    return convert_pt2e(prepared)


class _ReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


def _unshare_activations(model: nn.Module) -> None:
    """Replaces each ``nn.ReLU`` by a plain module: a ResNet block calls its one ReLU twice, which the quantizer's
    module-based pattern matching cannot annotate ("more than one output node"); convolutions stay quantized."""
    for name, child in model.named_children():
        if isinstance(child, nn.ReLU):
            setattr(model, name, _ReLU())
        else:
            _unshare_activations(child)
