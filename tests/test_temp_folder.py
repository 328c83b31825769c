"""A passing test run leaves nothing in the temp folder (tests/conftest.py: pytest_sessionfinish)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_passing_run_leaves_no_checkpoints_caches_or_compiled_code_behind(tmp_path):
    temp = tmp_path / "tmpdir"  # the run's TMPDIR: pytest's folders and the compile caches are made under it
    temp.mkdir()
    test = "tests/engine/test_predict_rerun.py::test_a_rerun_after_a_killed_run_removes_its_partial_outputs"
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env.update(OMP_NUM_THREADS="1", TMPDIR=str(temp))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    left = {p: p.stat().st_size for p in temp.rglob("*") if p.is_file() and not p.is_symlink()}
    assert sum(left.values()) < 2**20, left  # no checkpoint, cache or compiled code; libraries' session files remain
