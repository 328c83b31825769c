"""`kernels/` ships as `fastmtl.kernels` (never as a top-level `kernels` package) in editable installs and wheels."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_maps_kernels_into_the_package() -> None:
    import fastmtl.kernels.dfe
    import fastmtl.kernels.window_attention

    assert Path(fastmtl.kernels.dfe.__file__).resolve().is_relative_to(ROOT / "kernels")
    assert Path(fastmtl.kernels.window_attention.__file__).resolve().is_relative_to(ROOT / "kernels")


@pytest.mark.slow
def test_wheel_contains_fastmtl_kernels_and_no_top_level_kernels(tmp_path) -> None:
    pytest.importorskip("setuptools")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    result = subprocess.run([*cmd, str(ROOT)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("fastmtl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("__init__.py", "dfe/__init__.py", "dfe/ops.py", "dfe/backward.py", "window_attention/__init__.py",
                   "aot.py"):  # fmt: skip
        assert f"fastmtl/kernels/{module}" in names
    assert not any(n.startswith("kernels/") for n in names)
    assert "fastmtl/cli.py" in names and "fastmtl/data/isic2017.py" in names
    assert "fastmtl/kernel_report.py" in names and "fastmtl/models/launches.py" in names  # the report needs no checkout
    presets = ("quick", "demo", "isic2017_paper", "oct_fluid", "retouch_paper")
    assert all(f"fastmtl/configs/{name}.toml" in names for name in presets)  # package data: the presets
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "from fastmtl.engine.train.config_file import load_config; print(load_config('quick').model.img_size)"
    env = {**os.environ, "PYTHONPATH": str(site)}
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "64", loaded.stderr[-2000:]
