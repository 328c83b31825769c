"""The whole model on the Triton path (interpreter on CPU): one graph for torch.compile, with the kernels' ops in it,
and the same outputs as the reference."""

from __future__ import annotations

import os

import pytest
import torch

import fastmtl

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="Triton kernels need CUDA or TRITON_INTERPRET=1",
)


@pytest.mark.slow
def test_triton_path_is_one_graph_and_matches_reference(assert_outputs_close) -> None:
    torch.manual_seed(0)
    ref = fastmtl.create_model("resformer_mtl", img_size=32, kernels="reference").eval()
    fast = fastmtl.create_model("resformer_mtl", img_size=32, kernels="triton").eval()
    fast.load_state_dict(ref.state_dict())  # identical state_dict layout on both paths
    graphs = []

    def capture(gm: torch.fx.GraphModule, example_inputs) -> object:
        graphs.append(gm)
        return gm.forward  # runs the captured graph as it is: the kernels through their ops

    torch._dynamo.reset()
    compiled = torch.compile(fast, backend=capture, fullgraph=True)  # a graph break raises
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want, got = ref(x), compiled(x)
    assert len(graphs) == 1
    ops = {str(node.target).split(".")[1] for node in graphs[0].graph.nodes if str(node.target).startswith("fastmtl.")}
    assert ops == {"dfe_branches", "dfe_merge", "spatial_attention", "window_attention_fwd"}, ops
    assert_outputs_close(got, want, 1e-4)
