"""A data preflight: every problem of a dataset split in one table and one CSV, before any training starts.

:func:`check_data` builds the split's dataset with ``strict_labels=False``, which lists every problem of its label
table instead of refusing at the first (:mod:`fastmtl.data.tables`: a label row without an image, an image without
a label row, an id listed twice with the same or with conflicting labels, a label that is not 0 or 1 or is not
finite, two positive classes that exclude each other, an id that is not a plain file name, a path that leaves the
data folder, a missing mask; for RETOUCH every unreadable volume), and then reads every image and mask file once:
an unreadable or truncated image or mask, a mask whose size differs from its image, a mask that is not a clean
label map (more than two values: how it will be read is said), and an EXIF orientation that disagrees with the
mask. fastmtl reads the stored pixels unrotated; an orientation tag that turns the picture by 90 degrees for
display (tags 5-8) while the mask has the size of the turned view means the mask was drawn on what a viewer shows
and does not fit the pixels: a problem. Any other orientation tag is only a note (``include_notes``). Per-file
results are cached by path, size and mtime under ``$FASTMTL_CACHE/preflight``, so a second run over unchanged
files is instant.

The per-file checks cover the kinds with image files (``isic2017``, ``folder``, ``oct``); ``retouch`` gets its
volume checks and ``synthetic`` has nothing to check.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

import fastmtl.data.io as image_io
from fastmtl.data.cache import default_cache_dir
from fastmtl.data.registry import build_dataset, dataset_class, detect_kind
from fastmtl.data.tables import Problem
from fastmtl.files import atomic_write_bytes, atomic_write_json

__all__ = ["Problem", "check_data", "screen", "write_report"]

_EXIF_ORIENTATION = 0x0112
_SHOWN = {  # how a viewer shows the stored pixels for each EXIF orientation; 5-8 turn them by 90 degrees
    2: "mirrored left-right", 3: "rotated by 180 degrees", 4: "mirrored top-bottom", 5: "transposed",
    6: "rotated 90 degrees clockwise", 7: "transversed", 8: "rotated 90 degrees counter-clockwise",
}  # fmt: skip
_CACHE_VERSION = 2  # bump when the per-file findings change meaning


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


def _orientation(image_path: Path, stored: tuple[int, int], mask: tuple[int, ...] | None) -> Problem | None:
    """The EXIF orientation finding of an image (header only): a problem when the tag turns the picture by 90
    degrees for display and the mask has the turned size, not the stored one; a note for any other tag."""
    try:
        with Image.open(image_path) as opened:
            tag = opened.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):
        return None
    if tag not in _SHOWN:
        return None
    (h, w), shown = stored, f"orientation tag {tag}: a viewer shows the stored pixels {_SHOWN[tag]}"
    if tag >= 5 and h != w and mask == (w, h):
        detail = (f"{shown}, and the mask is {w}x{h} (HxW), the size of that turned view, not of the stored {h}x{w} "
                  "pixels fastmtl reads: the mask was drawn on the rotated image; store the image rotated "
                  "(PIL ImageOps.exif_transpose) or rotate the mask")  # fmt: skip
        return Problem(str(image_path), "exif orientation", detail)
    fits = "its mask fits them" if mask == stored else "no mask to compare" if mask is None else "see its mask"
    return Problem(str(image_path), "exif orientation", f"{shown}; fastmtl reads them unrotated ({fits})", note=True)


def _check_pair(image_path: Path, mask_path: Path | None, seg_classes: int) -> list[Problem]:
    try:
        image = image_io.read_image(image_path)
    except image_io.ImageReadError as err:
        return [Problem(str(image_path), "unreadable image", err.reason)]
    raw = None
    if mask_path is not None:
        try:
            raw = image_io.read_mask(mask_path)
        except image_io.ImageReadError as err:
            return [Problem(str(mask_path), "unreadable mask", err.reason)]
    orientation = _orientation(image_path, image.shape[:2], None if raw is None else raw.shape)
    problems = [] if orientation is None else [orientation]
    if raw is None:
        return problems
    if raw.shape != image.shape[:2] and (orientation is None or orientation.note):
        problems.append(Problem(str(mask_path), "size mismatch", f"mask {raw.shape[0]}x{raw.shape[1]} but image "
                                f"{image_path.name} {image.shape[0]}x{image.shape[1]} (HxW)"))  # fmt: skip
    return problems + _mask_values(mask_path, raw, seg_classes)


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


def _well_formed(found: object) -> bool:
    """A cached finding list as :func:`check_data` stores it: [[path, problem, detail, note], ...]."""
    return isinstance(found, list) and all(
        isinstance(p, list) and len(p) == 4 and all(isinstance(v, str) for v in p[:3]) and isinstance(p[3], bool)
        for p in found
    )


def _cache_file(root: Path, split: str | None) -> Path:
    base = default_cache_dir()
    digest = hashlib.sha256(os.fsencode(f"{root.resolve()}|{split}|v{_CACHE_VERSION}")).hexdigest()[:20]
    return base / "preflight" / f"{digest}.json"


def check_data(
    data_root: str | os.PathLike,
    split: str | None = None,
    *,
    kind: str = "auto",
    progress: bool = True,
    include_notes: bool = False,
) -> list[Problem]:
    """Every problem of one split of ``data_root`` (see the module docstring); an empty list when it is clean.

    Args:
        include_notes: also return the findings that are no problem (``note`` True), e.g. an EXIF orientation
            the mask agrees with.

    Raises:
        ValueError: an unknown ``kind``. FileNotFoundError: ``data_root`` does not exist (with ``kind="auto"``).
    """
    root = Path(data_root)
    kind = detect_kind(root) if kind == "auto" else kind
    dataset_class(kind)  # an unknown kind is the caller's mistake, not a finding about the data
    try:
        dataset = build_dataset(kind, root, split or "training", img_size=32, train=False, cache_dir=False,
                                strict_labels=False)  # fmt: skip
    except (ValueError, FileNotFoundError, OSError) as err:
        return [Problem(str(root), "labels or layout", str(err))]
    problems: list[Problem] = list(dataset.label_problems)
    pairs = list(zip(getattr(dataset, "image_paths", []), getattr(dataset, "mask_paths", []), strict=False))
    cache_path = _cache_file(root, split)
    try:
        cached = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cached = {}
    results: dict[str, list] = {}
    for image_path, mask_path in tqdm(pairs, desc="check-data", unit="image", disable=not progress, leave=False):
        key = _stat_key([image_path] + ([mask_path] if mask_path else []))
        found = cached.get(key) if isinstance(cached, dict) else None
        if not _well_formed(found):  # absent, or a damaged cache file: check the files again
            found = [list(vars(p).values()) for p in _check_pair(image_path, mask_path, dataset.seg_classes)]
        results[key] = found
        problems.extend(Problem(*p) for p in found)
    try:
        atomic_write_json(cache_path, results)
    except OSError:
        pass  # a read-only cache only costs the next run its speed
    return [p for p in problems if include_notes or not p.note]


def write_report(problems: list[Problem], path: str | os.PathLike) -> None:
    """The problems as a CSV (path, problem, detail); a note's problem reads ``note: <kind>``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "problem", "detail"])
    writer.writerows([p.path, f"note: {p.problem}" if p.note else p.problem, p.detail] for p in problems)
    atomic_write_bytes(path, buffer.getvalue().encode(errors="backslashreplace"))  # names that are not UTF-8
