"""Which kernels a timed module runs, and the fallbacks that happened while it was timed.

Every benchmark row records its kernel backend (``extra_info["kernels"]``: "triton", "reference", or "none" for
a model without kernel-backed layers) and ``extra_info["fallbacks"]``: the Triton kernels replaced by the
reference during the run, graph breaks of ``torch.compile`` (parts run eagerly) and CUDA graphs that Inductor
skipped. A goal measured on a fallback is then visibly not the path it claims to measure.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fastmtl.backend import kernel_layers, use_triton


def kernel_backend_of(module: nn.Module | None, device: torch.device | str) -> str:
    """The backend ``module`` runs on ``device``: "triton" when any kernel-backed layer runs its Triton kernels,
    "reference" when it has such layers and none does, "none" without them (peers, bare functions)."""
    if module is None:
        return "none"
    cuda = torch.device(device).type == "cuda"
    backends = [layer.kernels for layer in kernel_layers(module)]
    if not backends:
        return "none"
    return "triton" if any(use_triton(b, cuda) for b in backends) else "reference"


def _counters() -> dict[str, int]:
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - every supported torch has it
        return {}
    return {
        "graph_breaks": sum(counters["graph_break"].values()),
        "cudagraph_skips": int(counters["inductor"].get("cudagraph_skips", 0)),
    }


def snapshot() -> dict[str, int]:
    """The compile counters now, to compare with :func:`since` after the timed run."""
    return _counters()


def since(before: dict[str, int], kernels_before: str, kernels_after: str) -> list[str]:
    """The fallbacks between ``before`` (a :func:`snapshot`) and now, as short phrases."""
    now, found = _counters(), []
    if kernels_before == "triton" and kernels_after != "triton":
        found.append("Triton kernels fell back to the reference")
    breaks = now.get("graph_breaks", 0) - before.get("graph_breaks", 0)
    if breaks > 0:
        found.append(f"torch.compile graph breaks ({breaks}): parts ran eagerly")
    skips = now.get("cudagraph_skips", 0) - before.get("cudagraph_skips", 0)
    if skips > 0:
        found.append("CUDA graphs skipped")
    return found


def paper_fallbacks(paper: dict[str, Any]) -> list[str]:
    """The fallbacks the paper protocol's summary records (its step string and layer paths)."""
    step = str(paper.get("layer_paths", {}).get("step", "")) + " " + str(paper.get("step", ""))
    found = []
    if "compile failed" in step:
        found.append("compiled step fell back to eager")
    if "Triton kernels failed" in step or "reference layers" in step:
        found.append("Triton kernels fell back to the reference")
    counters = paper.get("compile_counters") or {}
    if counters.get("graph_breaks"):
        found.append(f"torch.compile graph breaks ({counters['graph_breaks']}): parts ran eagerly")
    if counters.get("cudagraph_skips"):
        found.append("CUDA graphs skipped")
    return found
