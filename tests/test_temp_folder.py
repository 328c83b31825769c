"""A passing test run leaves nothing in pytest's temp folder (tests/conftest.py: pytest_sessionfinish)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_passing_run_leaves_no_session_checkpoints_or_caches_behind(tmp_path):
    basetemp = tmp_path / "basetemp"
    test = "tests/engine/test_predict_rerun.py::test_a_rerun_after_a_killed_run_removes_its_partial_outputs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}",
                           test], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert basetemp.is_dir() and list(basetemp.iterdir()) == [], [p.name for p in basetemp.iterdir()]
