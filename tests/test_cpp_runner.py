"""The C++ runner (cpp/fastmtl_infer.cpp): built with CMake, run on an exported package, compared with predict.

Needs cmake, a C++ compiler and the libpng/libjpeg headers (Debian: ``apt-get install -y cmake g++ libpng-dev
libjpeg-dev``); skipped with the reason otherwise. The build directory lives in the session's pytest tmp dir.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastmtl
from fastmtl.checkpoint.store import save_checkpoint
from fastmtl.engine.predict.job import predict
from fastmtl.inference.export import export

REPO = Path(__file__).resolve().parents[1]
INCLUDE_DIRS = [Path("/usr/include"), Path("/usr/local/include"), Path("/usr/include/x86_64-linux-gnu"),
                Path("/usr/include/aarch64-linux-gnu")]  # fmt: skip

pytestmark = pytest.mark.slow


def _missing() -> str | None:
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install -y cmake g++)"
    for header, package in (("png.h", "libpng-dev"), ("jpeglib.h", "libjpeg-dev")):
        if not any((d / header).is_file() for d in INCLUDE_DIRS):
            return f"{header} not found (apt-get install -y {package})"
    return None


@pytest.fixture(scope="session")
def runner(tmp_path_factory) -> Path:
    """Configures and builds fastmtl-infer and its CTest entries once per session; runs ctest."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    build = tmp_path_factory.mktemp("cpp-build")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = ["cmake", "-S", str(REPO), "-B", str(build), *generator, "-DFASTMTL_BUILD_INFER=ON",
                 "-DFASTMTL_BUILD_TESTS=ON", f"-DFASTMTL_PYTHON={sys.executable}",
                 f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]  # fmt: skip
    for cmd in (configure, ["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    tests = subprocess.run(["ctest", "--output-on-failure"], cwd=build, capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout[-3000:]
    return build / "fastmtl-infer"


def _images(folder: Path) -> None:
    """Model-size, larger and smaller images, PNG and JPEG, RGB and greyscale, one in a sub-folder."""
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    for i, (h, w) in enumerate([(32, 32), (48, 64), (20, 25), (32, 32), (40, 30)]):
        yy, xx = np.mgrid[0:h, 0:w]
        blob = ((yy - h / 2) ** 2 + (xx - w / 3) ** 2) < (h / 3) ** 2
        noise = rng.integers(100, 200, (1, 1, 3)) + rng.integers(-20, 20, (h, w, 3))
        pixels = np.clip(noise - 90 * blob[..., None], 0, 255).astype(np.uint8)
        name = ["a.png", "b.png", "sub/c.png", "d.jpg", "e.png"][i]
        Image.fromarray(pixels[..., 0] if i == 4 else pixels).save(folder / name, quality=95)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cpp_runner_matches_predict(runner: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = fastmtl.create_model("unet_resnet34_mtl", img_size=32)
    checkpoint = save_checkpoint(tmp_path / "tiny", model)
    package = export(checkpoint, tmp_path / "tiny.pt2", format="aoti", batch_size=2)
    _images(tmp_path / "images")
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))
    predict(checkpoint, tmp_path / "images", tmp_path / "py", batch_size=2, num_workers=0)
    cmd = [str(runner), "--package", str(package), "--out", str(tmp_path / "cpp"), "--batch-size", "2",
           str(tmp_path / "images")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "broken.png" in done.stderr
    py, cpp = _rows(tmp_path / "py" / "probabilities.csv"), _rows(tmp_path / "cpp" / "probabilities.csv")
    assert len(py) == 5 and list(py[0]) == list(cpp[0])  # same columns in the same order
    broken = [str(tmp_path / "images" / "broken.png")]
    assert [r["path"] for r in _rows(tmp_path / "cpp" / "failures.csv")] == broken
    assert [r["path"] for r in _rows(tmp_path / "py" / "failures.csv")] == broken
    for a, b in zip(py, cpp, strict=True):
        assert (a["path"], a["id"], a["mask"]) == (b["path"], b["id"], b["mask"])
        probs = [k for k in a if k.startswith("prob_")]
        np.testing.assert_allclose([float(b[k]) for k in probs], [float(a[k]) for k in probs], atol=1e-4)
        mask_py = np.asarray(Image.open(tmp_path / "py" / "masks" / a["mask"]))
        mask_cpp = np.asarray(Image.open(tmp_path / "cpp" / "masks" / b["mask"]))
        assert mask_cpp.shape == mask_py.shape and set(np.unique(mask_cpp)) <= {0, 255}
        # Both sides resize identically (Pillow's fixed-point filters); only logits within ~1e-6 of the
        # threshold may flip between eager and the compiled package.
        assert (mask_cpp != mask_py).mean() <= 0.002, a["id"]
        assert abs(float(a["area_fraction"]) - float(b["area_fraction"])) <= 0.002
