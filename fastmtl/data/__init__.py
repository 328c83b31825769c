"""Datasets for ResFormer-MTL: ISIC 2017, RETOUCH volumes, OCT manifests, plain folders and synthetic lesions.

Every dataset returns the sample dict described in :mod:`fastmtl.data.base`; :func:`build_dataset` builds
one by kind, :func:`detect_kind` guesses the kind from a folder layout and :func:`split_indices` makes
seeded stratified or grouped splits (wrap the result with :func:`subset` to keep ``labels`` and friends).
"""

from __future__ import annotations

from pathlib import Path

from fastmtl.data.base import MTLDataset, make_cache
from fastmtl.data.cache import ArrayCache, default_cache_dir
from fastmtl.data.folder import ImageFolder
from fastmtl.data.io import ImageReadError, read_image, read_mask
from fastmtl.data.isic2017 import ISIC2017, ISIC_CLASSES
from fastmtl.data.oct import OCTManifest
from fastmtl.data.retouch import Retouch
from fastmtl.data.splits import DatasetSubset, group_split, split_indices, stratified_split, subset
from fastmtl.data.synthetic import SyntheticLesions
from fastmtl.data.transforms import PairTransform, build_transforms, denormalize, normalize_image

__all__ = [
    "DATASET_KINDS",
    "ArrayCache",
    "DatasetSubset",
    "ISIC2017",
    "ISIC_CLASSES",
    "ImageFolder",
    "ImageReadError",
    "MTLDataset",
    "OCTManifest",
    "PairTransform",
    "Retouch",
    "SyntheticLesions",
    "build_dataset",
    "build_transforms",
    "default_cache_dir",
    "denormalize",
    "detect_kind",
    "group_split",
    "make_cache",
    "normalize_image",
    "read_image",
    "read_mask",
    "split_indices",
    "stratified_split",
    "subset",
]

DATASET_KINDS = ("isic2017", "retouch", "oct", "folder", "synthetic")
_FILE_DATASETS = {"isic2017": ISIC2017, "retouch": Retouch, "oct": OCTManifest, "folder": ImageFolder}
_SYNTHETIC_N = {"train": 256, "training": 256, "all": 256}  # other splits: 64


def build_dataset(
    kind: str,
    root: str | Path | None,
    split: str,
    *,
    img_size: int | tuple[int, int] | None,
    train: bool,
    cache_dir: str | Path | bool | None = None,
    normalize: str = "imagenet",
    **opts,
) -> MTLDataset:
    """Builds one split of a dataset.

    Args:
        kind: one of ``DATASET_KINDS``; "auto" calls :func:`detect_kind` on ``root``.
        root: dataset folder (ignored by "synthetic"; an OCT manifest may be given as its CSV file).
        split: "train" / "val" / "test" / "all" (ISIC also accepts "training", "validation", "Test_v2").
        img_size: stored and output size, int or (h, w); None keeps source sizes.
        train: apply the training augmentation.
        cache_dir: decoded-array cache; None = ``$FASTMTL_CACHE`` or ``~/.cache/fastmtl``, False = memory only.
        normalize: "imagenet", "raw" (0..255) or "unit" (0..1).
        **opts: dataset-specific options (vendor, fractions, seed, subset, task, n, seg_classes, in_chans,
            augment, require_labels).

    Raises:
        ValueError: unknown kind or options.
    """
    if kind == "auto":
        kind = detect_kind(root)
    common = {"img_size": img_size, "train": train, "cache_dir": cache_dir, "normalize": normalize}
    if kind == "synthetic":
        n = opts.pop("n", _SYNTHETIC_N.get(split, 64))
        return SyntheticLesions(n, split, **common, **opts)
    if kind not in DATASET_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; valid kinds: {', '.join(DATASET_KINDS)} (or 'auto')")
    if root is None:
        raise ValueError(f"dataset kind {kind!r} needs a root folder")
    return _FILE_DATASETS[kind](root, split, **common, **opts)


def _has(root: Path, pattern: str) -> bool:
    return next(iter(root.glob(pattern)), None) is not None


def detect_kind(root: str | Path | None) -> str:
    """Guesses the dataset kind from a folder layout.

    None gives "synthetic"; ``ISIC-2017_*_Data/`` -> "isic2017"; ``manifest.csv`` (or a CSV file) -> "oct";
    ``oct.mhd`` up to two levels down -> "retouch"; ``images/`` or ``<split>/images/`` -> "folder".

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: no known layout matches.
    """
    if root is None:
        return "synthetic"
    path = Path(root)
    if not path.exists():
        raise FileNotFoundError(f"dataset root {path} not found")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "oct"
        raise ValueError(f"{path} is a file; expected a dataset folder or an OCT manifest CSV")
    if _has(path, "ISIC-2017_*_Data"):
        return "isic2017"
    if (path / "manifest.csv").is_file():
        return "oct"
    if _has(path, "oct.mhd") or _has(path, "*/oct.mhd") or _has(path, "*/*/oct.mhd"):
        return "retouch"
    if (path / "images").is_dir() or _has(path, "*/images"):
        return "folder"
    raise ValueError(
        f"cannot tell the dataset kind of {path}: expected ISIC-2017_<Split>_Data/ (isic2017), manifest.csv (oct), "
        "<case>/oct.mhd (retouch) or images/ [+ masks/, labels.csv] (folder)"
    )
