"""Shared fixtures for engine tests: tiny checkpoints, small image files of every awkward kind, an ISIC tree."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fastmtl
from fastmtl.checkpoint.store import save_checkpoint
from fastmtl.inference.build import build
from fastmtl.inference.path import Request, Sample
from fastmtl.inference.resolve import resolve
from fastmtl.runtime import cpu_info


@pytest.fixture(scope="module")
def _module_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fastmtl-cache")


@pytest.fixture
def module_cache(_module_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$FASTMTL_CACHE`` for the test: one folder shared by the tests of a module (after the suite's private
    per-test folder is set), so a module's ONNX exports and OpenVINO files are built once."""
    monkeypatch.setenv("FASTMTL_CACHE", str(_module_cache_dir))
    return _module_cache_dir


@pytest.fixture(scope="session")
def built_path() -> Callable[..., nn.Module]:
    """``built_path(model, precision, example, runtime=, compile=, calibration=, refresh=, log=)``: the path resolved
    as ``fastmtl predict`` resolves it, but strictly (PrecisionUnavailable where it cannot run here), then built on
    ``calibration`` (default ``[example]``)."""

    def make(model: nn.Module, precision: str, example: torch.Tensor, *, runtime: str = "torch", compile: bool = False,
             calibration: list[torch.Tensor] | None = None, refresh: bool = False, log=print) -> nn.Module:  # fmt: skip
        sample, device = Sample.of(calibration or [example], refresh=refresh), next(model.parameters()).device
        path = resolve(Request(precision, runtime, compile), device=device, cpu=cpu_info(), n_images=example.shape[0],
                       sample=sample, fallback=False, log=log)  # fmt: skip
        return build(path, model, sample, log=log)

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Callable[..., Path]:
    """Factory: ``tiny_checkpoint(name="unet_resnet34_mtl", img_size=64, meta=None, **overrides)`` -> weights path.

    Models are seeded (0) and cached per argument set for the session, so calling it twice is free.
    """
    root = tmp_path_factory.mktemp("checkpoints")
    made: dict[str, Path] = {}

    def make(name: str = "unet_resnet34_mtl", img_size: int = 64, meta: dict | None = None, **overrides) -> Path:
        key = repr((name, img_size, sorted((meta or {}).items()), sorted(overrides.items())))
        if key not in made:
            torch.manual_seed(0)
            model = fastmtl.create_model(name, img_size=img_size, **overrides)
            made[key] = save_checkpoint(root / f"ckpt{len(made)}", model, meta=meta)
        return made[key]

    return make


def _rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random RGB picture with a dark blob, so masks and overlays have some structure."""
    yy, xx = np.mgrid[0:h, 0:w]
    blob = ((yy - h / 2) ** 2 / (h / 3) ** 2 + (xx - w / 2) ** 2 / (w / 3) ** 2) < 1
    base = rng.integers(120, 230, size=(1, 1, 3)) + rng.integers(-10, 10, size=(h, w, 3))
    return np.clip(base - 90 * blob[..., None], 0, 255).astype(np.uint8)


@pytest.fixture
def image_files(tmp_path) -> dict[str, tuple[Path, tuple[int, int]]]:
    """Six readable images in ``tmp_path/images`` (nested folder included) -> {name: (path, (H, W))}.

    Kinds: RGB PNG 48x64, JPEG 37x53, greyscale PNG 40x40, RGBA PNG 33x47, 16-bit greyscale PNG 50x30,
    RGB BMP in a sub-folder 32x32.
    """
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    files = {
        "rgb": (folder / "rgb.png", Image.fromarray(_rgb(rng, 48, 64))),
        "jpeg": (folder / "photo.jpg", Image.fromarray(_rgb(rng, 37, 53))),
        "grey": (folder / "grey.png", Image.fromarray(_rgb(rng, 40, 40)[..., 0])),
        "rgba": (
            folder / "rgba.png",
            Image.fromarray(np.dstack([_rgb(rng, 33, 47), np.full((33, 47), 200, np.uint8)])),
        ),
        "gray16": (folder / "deep.png", Image.fromarray((_rgb(rng, 50, 30)[..., 1].astype(np.uint16) * 257))),
        "bmp": (folder / "sub" / "nested.bmp", Image.fromarray(_rgb(rng, 32, 32))),
    }
    out = {}
    for name, (path, image) in files.items():
        image.save(path)
        out[name] = (path, (image.height, image.width))
    return out


@pytest.fixture
def corrupt_image(tmp_path) -> Path:
    """``tmp_path/images/broken.png``: a PNG name holding garbage bytes."""
    path = tmp_path / "images" / "broken.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3)
    return path


def write_isic_split(
    root: Path, split: str = "Validation", n: int = 6, size: tuple[int, int] = (40, 48), *, masks=True, labels=True
) -> Path:
    """Writes an ISIC 2017 tree for one split (JPEG images, 0/255 masks, Part 3 CSV) and returns ``root``.

    Image i is labelled melanoma when i % 3 == 0 and seborrheic keratosis when i % 3 == 1; image 1's mask is
    empty, the others hold an ellipse.
    """
    rng = np.random.default_rng(1)
    data, truth = root / f"ISIC-2017_{split}_Data", root / f"ISIC-2017_{split}_Part1_GroundTruth"
    data.mkdir(parents=True, exist_ok=True)
    rows = []
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        image_id = f"ISIC_{i:07d}"
        Image.fromarray(_rgb(rng, h, w)).save(data / f"{image_id}.jpg", quality=90)
        if masks:
            truth.mkdir(exist_ok=True)
            ellipse = ((yy - h / 2) ** 2 / (h / (3 + i % 2)) ** 2 + (xx - w / 2) ** 2 / (w / 3) ** 2) < 1
            mask = np.zeros((h, w), np.uint8) if i == 1 else ellipse.astype(np.uint8) * 255
            Image.fromarray(mask).save(truth / f"{image_id}_segmentation.png")
        rows.append([image_id, float(i % 3 == 0), float(i % 3 == 1)])
    if labels:
        with open(root / f"ISIC-2017_{split}_Part3_GroundTruth.csv", "w", newline="") as file:
            csv.writer(file).writerows([["image_id", "melanoma", "seborrheic_keratosis"], *rows])
    return root


@pytest.fixture
def isic_root(tmp_path) -> Callable[..., Path]:
    """Factory: ``isic_root(split="Validation", n=6, size=(40, 48), masks=True, labels=True)`` -> dataset root."""

    def make(split: str = "Validation", n: int = 6, size=(40, 48), *, masks=True, labels=True) -> Path:
        return write_isic_split(tmp_path / "isic", split, n, size, masks=masks, labels=labels)

    return make
