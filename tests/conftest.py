"""Suite-wide test settings: GPU-marked tests skip cleanly without CUDA; shared data is located once."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastmtl.runtime import CPU_ENV, SIMULATED_CPUS, CpuInfo

# Triton kernels run on CPU through the interpreter; the variable must be set before any kernel module is imported,
# and this file is imported before every test module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Inductor's and Triton's compile caches (hundreds of MB after a run) go to a folder of this run, removed at its end,
# for this process and the subprocesses the tests start.
_COMPILE_CACHE = Path(tempfile.mkdtemp(prefix="fastmtl-tests-compile-cache-"))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(_COMPILE_CACHE / "inductor"))
os.environ.setdefault("TRITON_CACHE_DIR", str(_COMPILE_CACHE / "triton"))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skips = {}
    if not torch.cuda.is_available():
        skips["gpu"] = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    if os.environ.get("FASTMTL_AOT_SWEEPS") == "0":  # .ci/run: its gpu-versions leg runs them, with the GPU's Triton
        skips["aot_sweep"] = pytest.mark.skip(reason="FASTMTL_AOT_SWEEPS=0: the full ahead-of-time sweeps run apart")
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)


_BASETEMP: set[Path] = set()  # pytest's temp folder of this run, once a test has asked for it


@pytest.fixture(autouse=True)
def _private_default_cache(tmp_path_factory, monkeypatch):
    """Whatever uses the default cache (decoded images, ONNX files, precision decisions), in-process or in a
    subprocess, writes to a throw-away folder, never to the user's ~/.cache/fastmtl."""
    folder = tmp_path_factory.mktemp("default_cache")
    _BASETEMP.add(tmp_path_factory.getbasetemp())
    monkeypatch.setenv("FASTMTL_CACHE", str(folder))
    yield
    shutil.rmtree(folder, ignore_errors=True)  # a cache is no evidence of a failure: never kept


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After a passing run, nothing is left in pytest's temp folder: the "failed" retention policy (pyproject.toml)
    deletes each passing test's ``tmp_path``, but not the folders that session-wide fixtures make with
    ``tmp_path_factory`` (shared checkpoints, exports, a C++ build: hundreds of MB). The compile caches go after
    any run."""
    for basetemp in _BASETEMP if exitstatus == 0 else ():
        for folder in basetemp.iterdir():
            shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(_COMPILE_CACHE, ignore_errors=True)


@pytest.fixture(params=list(SIMULATED_CPUS))
def cpu_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> CpuInfo:
    """Runs the test once per CPU kind fastmtl's choices depend on (AVX2 only; AVX-512 + VNNI + bf16; AMX), whatever
    CPU runs it: ``$FASTMTL_CPU`` names the kind, so :func:`fastmtl.runtime.cpu_info` in this process and in its
    subprocesses returns it. Returns the simulated :class:`~fastmtl.runtime.CpuInfo`."""
    monkeypatch.setenv(CPU_ENV, request.param)
    return SIMULATED_CPUS[request.param]


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the repository; skips the test when it is absent (e.g. a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (only developer and CI machines have it)")
    return SHARED_DATA


@pytest.fixture
def header_checkpoint(tmp_path):
    """Factory: ``header_checkpoint(name, img_size)`` -> a safetensors file whose header holds that fastmtl model
    config and one 4-byte tensor: what the command line and ``predict`` / ``export`` read before any work, at no
    disk cost; loading it as a model fails, so a test using it shows that a check came first."""

    def make(name: str, img_size: int) -> Path:
        header = {
            "__metadata__": {"fastmtl_config": json.dumps({"name": name, "img_size": img_size}), "fastmtl_meta": "{}"},
            "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        }
        raw = json.dumps(header).encode()
        path = tmp_path / f"{name}-{img_size}.safetensors"
        path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(4))
        return path

    return make


@pytest.fixture
def assert_outputs_close():
    """``assert_outputs_close(actual, expected, tol)``: both fields of two MTLOutputs agree within ``tol``."""

    def check(actual, expected, tol: float) -> None:
        for name in ("seg_logits", "cls_logits"):
            torch.testing.assert_close(getattr(actual, name), getattr(expected, name), rtol=tol, atol=tol, msg=name)

    return check


# A small OCT manifest (the layout of ../shared/data/oct/manifest.csv), written by the tests themselves.
HEADER = "dataset,case_id,subject,vendor,image_path,mask_path,mask_encoding,height,width,"
HEADER += "has_irf,has_srf,has_ped,has_fluid,fluid_frac"
RETOUCH_ENCODING = '"0=bg,1=IRF,2=SRF,3=PED"'


def _write_case(root: Path, name: str, mask: np.ndarray) -> tuple[str, str]:
    (root / "images").mkdir(exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    Image.fromarray(np.full(mask.shape, 100, np.uint8)).save(root / "images" / f"{name}.png")
    if mask is not None:
        Image.fromarray(mask).save(root / "masks" / f"{name}_mask.png")
    return f"images/{name}.png", f"masks/{name}_mask.png"


@pytest.fixture
def manifest_root(tmp_path: Path) -> Path:
    """4 'duke' subjects x 2 scans (0/1 fluid), 3 'rsample' scans: standard, re-ordered and 0/255 encodings."""
    lines = [HEADER]
    for s in range(4):
        for k in range(2):
            mask = np.zeros((20, 30), np.uint8)
            mask[5:8, 5 + 10 * k : 9 + 10 * k] = 1 if s % 2 == 0 else 0
            image, mask_path = _write_case(tmp_path, f"d{s}_{k}", mask)
            fluid = int(mask.any())
            lines.append(f'duke,d{s}_{k},subj{s},Spectralis,{image},{mask_path},"0=bg,1=fluid(any)",20,30,,,,{fluid},0')
    mask = np.zeros((20, 30), np.uint8)
    mask[2:6, 2:6], mask[10:14, 10:14] = 1, 3  # IRF and PED
    image, mask_path = _write_case(tmp_path, "r0", mask)
    lines.append(f"rsample,r0,r_s0,Cirrus,{image},{mask_path},{RETOUCH_ENCODING},20,30,1,0,1,1,0.1")
    image, mask_path = _write_case(tmp_path, "r1", mask)  # same pixels, stored with another class order
    lines.append(f'rsample,r1,r_s1,Topcon,{image},{mask_path},"0=bg,1=PED,2=SRF,3=IRF",20,30,1,0,1,1,0.1')
    image, mask_path = _write_case(tmp_path, "r2", mask * 85)  # 0/255-style fluid mask, no label flags
    lines.append(f"rsample,r2,r_s2,Cirrus,{image},,0/255,20,30,,,,,")
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    return tmp_path
