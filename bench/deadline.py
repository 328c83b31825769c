"""A pytest plugin that time-boxes a run without losing its report: ``-p bench.deadline``.

With ``FASTMTL_DEADLINE`` set to a Unix time, every test that would start after it is skipped with the reason
"cut short: the time budget of this run is spent"; tests already running finish. pytest then ends normally, so
its junit XML and pytest-benchmark JSON are still written, and the skipped tests say what was left out.
"""

from __future__ import annotations

import os
import time

import pytest

CUT_SHORT = "cut short: the time budget of this run is spent"


def pytest_runtest_setup(item: pytest.Item) -> None:
    deadline = float(os.environ.get("FASTMTL_DEADLINE") or 0)
    if deadline and time.time() > deadline:
        pytest.skip(CUT_SHORT)
