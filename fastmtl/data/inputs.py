"""Prediction inputs: a folder, glob, list file or paths resolved to a sorted image list with unique ids, and the
calibration batches drawn from them."""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from fastmtl.data.io import IMAGE_EXTENSIONS
from fastmtl.files import read_text, safe_name

__all__ = ["collect_inputs", "image_ids", "sample_batches"]

_GLOB_CHARS = "*?["


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _expand(item: str | os.PathLike, base: Path | None = None) -> list[Path]:
    """A folder (recursive), a glob pattern or a file path; a missing plain path is kept (reported later)."""
    text = os.path.expanduser(str(item))
    path = Path(text)
    if base is not None and not path.is_absolute() and not path.exists() and (base / path).exists():
        path = base / path
    if path.is_dir():  # special files and dangling links named like images are kept: the reader reports them
        return [p for p in path.rglob("*") if not p.is_dir() and _is_image(p)]
    if any(c in text for c in _GLOB_CHARS) and not path.exists():
        return [Path(p) for p in glob.glob(text, recursive=True) if not Path(p).is_dir() and _is_image(Path(p))]
    return [path]


def _read_list(path: Path) -> list[Path]:
    lines = [line.strip() for line in read_text(path, "input list").splitlines()]
    return [p for line in lines if line and not line.startswith("#") for p in _expand(line, base=path.parent)]


def collect_inputs(inputs: Any, *, exclude: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """Resolves ``inputs`` to a sorted, de-duplicated list of absolute image paths.

    Args:
        inputs: a folder (all images below it), a glob pattern, a text file with one path per line (relative
            lines are tried against the list's folder), a single image, or a list of any of these.
        exclude: folders whose images are left out (the mask and overlay folders of an earlier run).

    Raises:
        FileNotFoundError: nothing matches; the message names the input.
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    paths: list[Path] = []
    for item in items:
        candidate = Path(os.path.expanduser(str(item)))
        if candidate.is_file() and not _is_image(candidate):
            paths.extend(_read_list(candidate))
        else:
            found = _expand(item)
            if len(items) == 1 and found == [candidate] and not candidate.exists():
                found = []
            paths.extend(found)
    skip = tuple(os.path.abspath(folder) + os.sep for folder in exclude)
    result = sorted(Path(p) for p in {os.path.abspath(p) for p in paths} if not p.startswith(skip))
    if not result:
        raise FileNotFoundError(
            f"no images found for input {inputs!r} (a folder, glob pattern, list file or image paths; "
            f"extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    return result


def image_ids(paths: Sequence[Path]) -> list[str]:
    """Unique file-name-safe ids: the path below the inputs' common folder, separators as "__", no suffix.

    Names that map to one id (the same stem with another extension, names differing only in characters the
    sanitizer replaces or, for a case-insensitive file system, in case) get ``_<extension>``, then ``_2``, ``_3``
    ... in the order of ``paths`` (sorted by :func:`collect_inputs`, so the same inputs get the same ids), never an
    id another input has: masks, overlays and CSV rows are one per image."""
    root = os.path.commonpath([str(p.parent) for p in paths])
    ids = [safe_name(os.path.relpath(p.with_suffix(""), root).replace(os.sep, "__")) for p in paths]
    counts = Counter(i.casefold() for i in ids)
    used = {i.casefold() for i in ids if counts[i.casefold()] == 1}
    for index, (image_id, path) in enumerate(zip(ids, paths, strict=True)):
        if counts[image_id.casefold()] == 1:
            continue
        base = safe_name(f"{image_id}_{path.suffix.lstrip('.').lower()}")
        candidate, n = base, 1
        while candidate.casefold() in used:
            n += 1
            candidate = f"{base}_{n}"
        used.add(candidate.casefold())
        ids[index] = candidate
    return ids


def sample_batches(
    dataset: Dataset, batch_size: int, batches: int, device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    """Up to ``batches`` batches of ``batch_size`` readable images from the start of ``dataset`` (an
    :class:`~fastmtl.data.images.ImagePaths`: unreadable items carry no ``image``); the last may be short, and the
    list is empty when nothing reads."""
    images = []
    for index in range(len(dataset)):
        item = dataset[index]
        if "image" in item:
            images.append(item["image"])
        if len(images) == batch_size * batches:
            break
    if not images:
        return []
    stacked = torch.stack(images).to(device)
    return [stacked[i : i + batch_size] for i in range(0, len(images), batch_size)]
