"""Suite-wide test settings: GPU-marked tests skip cleanly without CUDA; shared data is located once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Triton kernels run on CPU through the interpreter; the variable must be set before any kernel module is imported,
# and this file is imported before every test module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the repository; skips the test when it is absent (e.g. a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (only developer and CI machines have it)")
    return SHARED_DATA


@pytest.fixture
def assert_outputs_close():
    """``assert_outputs_close(actual, expected, tol)``: both fields of two MTLOutputs agree within ``tol``."""

    def check(actual, expected, tol: float) -> None:
        for name in ("seg_logits", "cls_logits"):
            torch.testing.assert_close(getattr(actual, name), getattr(expected, name), rtol=tol, atol=tol, msg=name)

    return check
