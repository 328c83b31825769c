"""The whole model on the Triton path (interpreter on CPU): same outputs as the reference, one graph."""

from __future__ import annotations

import os

import pytest
import torch

import fastmtl

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="Triton kernels need CUDA or TRITON_INTERPRET=1",
)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    ref = fastmtl.create_model("resformer_mtl", img_size=32, kernels="reference").eval()
    fast = fastmtl.create_model("resformer_mtl", img_size=32, kernels="triton").eval()
    fast.load_state_dict(ref.state_dict())  # identical state_dict layout on both paths
    return ref, fast


def test_triton_path_matches_reference(models, assert_outputs_close) -> None:
    ref, fast = models
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want, got = ref(x), fast(x)
    assert_outputs_close(got, want, 1e-4)


def test_triton_path_traces_without_graph_breaks(models) -> None:
    _, fast = models
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(fast)(torch.randn(1, 3, 32, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
