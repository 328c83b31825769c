"""Shared setup of the kernel tests.

Without CUDA the Triton kernels run in the interpreter on CPU tensors: ``TRITON_INTERPRET=1`` must be set before
any kernel module is imported (``@triton.jit`` reads it at decoration time), which a conftest guarantees.
Tolerances live in one table, per dtype (``gpu``-marked tests are skipped by ``tests/conftest.py``).
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# (atol, rtol) per dtype; widen a row only with a comment that says why.
TOLERANCES = {
    torch.float32: (1e-5, 1e-4),
    torch.float16: (1e-3, 1e-2),
    torch.bfloat16: (1e-2, 5e-2),
}


@pytest.fixture
def assert_close():
    """``assert_close(actual, expected, dtype=None, scale=1.0)`` with the table's tolerances (times ``scale``)."""

    def check(actual, expected, dtype=None, scale=1.0, msg=None):
        atol, rtol = TOLERANCES[dtype or expected.dtype]
        torch.testing.assert_close(actual, expected.to(actual.dtype), atol=atol * scale, rtol=rtol * scale, msg=msg)

    return check
