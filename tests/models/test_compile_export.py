"""torch.compile and torch.export of the reference model (CPU)."""

from __future__ import annotations

import pytest
import torch

import fastmtl


@pytest.fixture(scope="module")
def model_and_input():
    torch.manual_seed(0)
    model = fastmtl.create_model("resformer_mtl", img_size=32, kernels="reference").eval()
    return model, torch.randn(2, 3, 32, 32)


@pytest.mark.slow
def test_compile_matches_eager(model_and_input, assert_outputs_close) -> None:
    model, x = model_and_input
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        ref, out = model(x), compiled(x)
    assert_outputs_close(out, ref, 1e-4)


def test_export_eval_mode(model_and_input, assert_outputs_close) -> None:
    model, x = model_and_input
    program = torch.export.export(model, (x,))
    out = program.module()(x)
    assert_outputs_close(out, model(x), 1e-5)
