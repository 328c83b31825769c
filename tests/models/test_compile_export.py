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
def test_compile_matches_eager(model_and_input) -> None:
    model, x = model_and_input
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        ref, out = model(x), compiled(x)
    torch.testing.assert_close(out.seg_logits, ref.seg_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.cls_logits, ref.cls_logits, rtol=1e-4, atol=1e-4)


def test_export_eval_mode(model_and_input) -> None:
    model, x = model_and_input
    program = torch.export.export(model, (x,))
    out = program.module()(x)
    ref = model(x)
    torch.testing.assert_close(out.seg_logits, ref.seg_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.cls_logits, ref.cls_logits, rtol=1e-5, atol=1e-5)
