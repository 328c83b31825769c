"""Tiny on-disk fixtures in the real layouts, written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _shared(*parts: str) -> Path:
    """Path under ``../shared/data``; skips the test when it is absent (a user's checkout has no shared/)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data {path} not present (expected ../shared/data beside the repository)")
    return path


@pytest.fixture
def isic_real() -> Path:
    """The real ISIC 2017 training split under ../shared/data/isic2017."""
    return _shared("isic2017", "ISIC-2017_Training_Part3_GroundTruth.csv").parent


@pytest.fixture
def oct_real() -> Path:
    """The real OCT manifest folder ../shared/data/oct."""
    return _shared("oct", "manifest.csv").parent


def lesion_pair(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB image (H, W, 3) with a dark ellipse and its 0/255 mask."""
    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width
    inside = ((yy - cy) / (0.25 * height)) ** 2 + ((xx - cx) / (0.3 * width)) ** 2 < 1
    image = np.full((height, width, 3), (220, 180, 150), np.uint8)
    image[inside] = (90, 60, 40)
    return image, inside.astype(np.uint8) * 255


ISIC_ROWS = [("ISIC_0000000", 1.0, 0.0), ("ISIC_0000001", 0.0, 1.0), ("ISIC_0000002", 0.0, 0.0)]


@pytest.fixture
def isic_root(tmp_path: Path) -> Path:
    """ISIC 2017 layout: Training (3 images of different sizes, masks, superpixels) and Test_v2 without masks."""
    root = tmp_path / "isic"
    rng = np.random.default_rng(0)
    sizes = [(30, 40), (36, 36), (28, 50)]
    for split, with_masks in (("Training", True), ("Test_v2", False)):
        data = root / f"ISIC-2017_{split}_Data"
        data.mkdir(parents=True)
        lines = ["image_id,melanoma,seborrheic_keratosis"]
        for (image_id, mel, sk), (h, w) in zip(ISIC_ROWS, sizes, strict=True):
            image, mask = lesion_pair(rng, h, w)
            Image.fromarray(image).save(data / f"{image_id}.jpg", quality=95)
            Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(data / f"{image_id}_superpixels.png")
            if with_masks:
                gt = root / f"ISIC-2017_{split}_Part1_GroundTruth"
                gt.mkdir(exist_ok=True)
                Image.fromarray(mask).save(gt / f"{image_id}_segmentation.png")
            lines.append(f"{image_id},{mel},{sk}")
        (root / f"ISIC-2017_{split}_Part3_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    return root


def _write_volume(folder: Path, volume: np.ndarray, name: str) -> None:
    """Writes (n_bscans, H, W) as ``<name>.mhd`` + ``<name>.raw`` with SimpleITK (skips the test without it)."""
    sitk = pytest.importorskip("SimpleITK")

    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(folder / f"{name}.mhd"), useCompression=False)


@pytest.fixture
def write_volume():
    """``write_volume(folder, array (n, H, W), name)`` writes a MetaImage pair."""
    return _write_volume


@pytest.fixture
def retouch_root(tmp_path: Path) -> Path:
    """RETOUCH layout: 3 Cirrus volumes + 1 Topcon volume (16-bit), 4 B-scans of 32x40 each.

    Labels per B-scan k of a volume: k=0 empty, k=1 IRF, k=2 SRF + PED, k=3 all three.
    """
    rng = np.random.default_rng(1)
    cases = [("Cirrus", "TRAIN001"), ("Cirrus", "TRAIN002"), ("Cirrus", "TRAIN003"), ("Topcon", "TRAIN049")]
    for vendor, case in cases:
        folder = tmp_path / "retouch" / f"RETOUCH-TrainingSet-{vendor}" / case
        dtype = np.uint16 if vendor == "Topcon" else np.uint8
        scans = rng.integers(0, 4000 if vendor == "Topcon" else 255, size=(4, 32, 40)).astype(dtype)
        ref = np.zeros((4, 32, 40), np.uint8)
        ref[1, 5:10, 5:10] = 1
        ref[2, 10:20, 10:30] = 2
        ref[2, 25:30, :] = 3
        ref[3, :8, :8], ref[3, 10:16, 10:20], ref[3, 20:24, 30:] = 1, 2, 3
        _write_volume(folder, scans, "oct")
        _write_volume(folder, ref, "reference")
    return tmp_path / "retouch"
