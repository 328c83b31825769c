"""A data preflight: every problem of a dataset split in one table and one CSV, before any training starts.

:func:`check_data` builds the split's dataset (an invalid label table, an id that is not a plain file name, a
duplicated or conflicting label row or a label row without an image is reported as that table's problem) and
then reads every image and mask file once: an unreadable or truncated image or mask, a mask whose size differs
from its image, a mask that is not a clean label map (more than two values: how it will be read is said), an
EXIF orientation other than "normal" (fastmtl reads the stored pixels unrotated, as the masks are drawn; a
viewer shows the image rotated), and, for ISIC, an image file without a label row. Per-file results are cached
by path, size and mtime under ``$FASTMTL_CACHE/preflight``, so a second run over unchanged files is instant.

Covers the ``isic2017`` and ``folder`` kinds (the layouts users fill by hand); other kinds only get the
table checks their dataset classes make on construction.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

import fastmtl.data.io as image_io
from fastmtl.data.cache import default_cache_dir
from fastmtl.data.registry import build_dataset, detect_kind
from fastmtl.files import atomic_write_bytes, atomic_write_json

__all__ = ["Problem", "check_data", "screen", "write_report"]

_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Problem:
    """One finding: the file, what is wrong (a short kind) and the details."""

    path: str
    problem: str
    detail: str


def _stat_key(paths: list[Path]) -> str:
    parts = []
    for path in paths:
        try:
            stat = path.stat()
            parts.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}")
        except OSError:
            parts.append(f"{path}:missing")
    return "|".join(parts)


def _mask_values(mask_path: Path, raw: np.ndarray, seg_classes: int) -> list[Problem]:
    counts = np.bincount(raw.ravel(), minlength=256)
    values = np.flatnonzero(counts)
    if seg_classes > 1 or len(values) <= 2:
        return []
    top = int(values[-1])
    threshold = 127 if top > 127 else top // 2
    shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
    return [Problem(str(mask_path), "mask values", f"{len(values)} values ({shown}), not a clean label map; "
                    f"read as lesion where the value is above {threshold}")]  # fmt: skip


def _check_pair(image_path: Path, mask_path: Path | None, seg_classes: int) -> list[Problem]:
    problems = []
    try:
        image = image_io.read_image(image_path)
    except image_io.ImageReadError as err:
        return [Problem(str(image_path), "unreadable image", err.reason)]
    try:
        with Image.open(image_path) as opened:
            orientation = opened.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):
        orientation = 1
    if orientation not in (1, None):
        detail = f"orientation tag {orientation}: the stored pixels are used unrotated (a viewer shows them rotated)"
        problems.append(
            Problem(str(image_path), "exif orientation", detail + "; its mask must match the stored pixels")
        )
    if mask_path is None:
        return problems
    try:
        raw = image_io.read_mask(mask_path)
    except image_io.ImageReadError as err:
        return [*problems, Problem(str(mask_path), "unreadable mask", err.reason)]
    if raw.shape != image.shape[:2]:
        problems.append(Problem(str(mask_path), "size mismatch", f"mask {raw.shape[0]}x{raw.shape[1]} but image "
                                f"{image_path.name} {image.shape[0]}x{image.shape[1]} (HxW)"))  # fmt: skip
    return problems + _mask_values(mask_path, raw, seg_classes)


def _unlabelled_isic(dataset) -> list[Problem]:
    listed = set(dataset.ids)
    return [
        Problem(str(p), "image without a label", f"not in {dataset.csv_path.name}")
        for p in sorted(dataset.image_dir.iterdir())
        if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.stem.startswith("ISIC_")
        and "superpixels" not in p.stem and p.stem not in listed
    ]  # fmt: skip


def screen(dataset) -> dict[int, Problem]:
    """The quick check training runs on its data: {sample index: problem} for every image or mask whose header
    cannot be read or whose sizes differ (headers only, so it takes seconds even for thousands of files; a file
    truncated past its header is named when training reads it, and by :func:`check_data`)."""
    bad: dict[int, Problem] = {}
    pairs = zip(getattr(dataset, "image_paths", []), getattr(dataset, "mask_paths", []), strict=False)
    for index, (image_path, mask_path) in enumerate(pairs):
        try:
            size = image_io.image_size(image_path)
        except image_io.ImageReadError as err:
            bad[index] = Problem(str(image_path), "unreadable image", err.reason)
            continue
        if mask_path is None:
            continue
        try:
            mask_size = image_io.image_size(mask_path)
        except image_io.ImageReadError as err:
            bad[index] = Problem(str(mask_path), "unreadable mask", err.reason)
            continue
        if mask_size != size:
            bad[index] = Problem(str(mask_path), "size mismatch", f"mask {mask_size[0]}x{mask_size[1]} but image "
                                 f"{Path(image_path).name} {size[0]}x{size[1]} (HxW)")  # fmt: skip
    return bad


def describe(bad: dict[int, Problem]) -> str:
    """The first few problems of :func:`screen` in one line, with the count of the rest."""
    shown = "; ".join(f"{Path(p.path).name}: {p.problem} ({p.detail})" for p in list(bad.values())[:3])
    return shown + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")


def _cache_file(root: Path, split: str | None) -> Path:
    base = default_cache_dir()
    digest = hashlib.sha256(f"{root.resolve()}|{split}".encode()).hexdigest()[:20]
    return base / "preflight" / f"{digest}.json"


def check_data(
    data_root: str | os.PathLike, split: str | None = None, *, kind: str = "auto", progress: bool = True
) -> list[Problem]:
    """Every problem of one split of ``data_root`` (see the module docstring); an empty list when it is clean."""
    root = Path(data_root)
    kind = detect_kind(root) if kind == "auto" else kind
    try:
        dataset = build_dataset(kind, root, split or "training", img_size=32, train=False, cache_dir=False)
    except (ValueError, FileNotFoundError, OSError) as err:
        return [Problem(str(root), "labels or layout", str(err))]
    pairs = list(zip(getattr(dataset, "image_paths", []), getattr(dataset, "mask_paths", []), strict=False))
    cache_path = _cache_file(root, split)
    try:
        cached = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cached = {}
    results: dict[str, list] = {}
    problems: list[Problem] = []
    for image_path, mask_path in tqdm(pairs, desc="check-data", unit="image", disable=not progress, leave=False):
        key = _stat_key([image_path] + ([mask_path] if mask_path else []))
        found = cached.get(key)
        if found is None:
            found = [list(vars(p).values()) for p in _check_pair(image_path, mask_path, dataset.seg_classes)]
        results[key] = found
        problems.extend(Problem(*p) for p in found)
    if kind == "isic2017" and hasattr(dataset, "csv_path"):
        problems.extend(_unlabelled_isic(dataset))
    try:
        atomic_write_json(cache_path, results)
    except OSError:
        pass  # a read-only cache only costs the next run its speed
    return problems


def write_report(problems: list[Problem], path: str | os.PathLike) -> None:
    """The problems as a CSV (path, problem, detail)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "problem", "detail"])
    writer.writerows([p.path, p.problem, p.detail] for p in problems)
    atomic_write_bytes(path, buffer.getvalue().encode())
