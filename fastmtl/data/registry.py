"""The dataset kinds in one table: kind -> class, detection of the kind from a folder, and building a split.

The engine and the command line ask this module (through :mod:`fastmtl.data`) about datasets instead of
knowing their layouts: :func:`dataset_class` gives the class of a kind (or of a detected folder), and the class
answers for its splits (``resolve_split``, ``own_val_split``) and class names (``class_names``,
``seg_class_names``).
"""

from __future__ import annotations

from pathlib import Path

from fastmtl.data.base import MTLDataset
from fastmtl.data.folder import ImageFolder
from fastmtl.data.isic2017 import ISIC2017
from fastmtl.data.oct import OCTManifest
from fastmtl.data.retouch import Retouch
from fastmtl.data.synthetic import SyntheticLesions
from fastmtl.options import DATA_KINDS, check_kind, detect_kind  # no PyTorch: the command line asks them first

__all__ = ["DATASETS", "DATASET_KINDS", "build_dataset", "dataset_class", "detect_kind"]

# The kinds are named in fastmtl.options (no PyTorch: the command line checks a --kind before importing it).
DATASETS: dict[str, type[MTLDataset]] = dict(
    zip(DATA_KINDS, (ISIC2017, Retouch, OCTManifest, ImageFolder, SyntheticLesions), strict=True)
)
DATASET_KINDS = DATA_KINDS
_SYNTHETIC_N = {"train": 256, "all": 256}  # other splits: 64


def dataset_class(kind: str, root: str | Path | None = None) -> type[MTLDataset]:
    """The dataset class of ``kind``; "auto" detects the kind from ``root`` (see :func:`detect_kind`).

    Raises:
        ValueError: unknown kind (the message lists the valid ones) or an undetectable folder.
        FileNotFoundError: "auto" with a ``root`` that does not exist.
    """
    if check_kind(kind) == "auto":
        kind = detect_kind(root)
    return DATASETS[kind]


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
        split: "train" / "val" / "test" / "all" or an alias every kind understands ("training", "validation");
            the class's ``resolve_split`` says what it means for that kind (ISIC also takes "Test_v2").
        img_size: stored and output size, int or (h, w); None keeps source sizes.
        train: apply the training augmentation.
        cache_dir: decoded-array cache; None = ``$FASTMTL_CACHE`` or ``~/.cache/fastmtl``, False = memory only.
        normalize: "imagenet", "raw" (0..255) or "unit" (0..1).
        **opts: dataset-specific options (vendor, fractions, seed, subset, task, n, seg_classes, in_chans,
            augment, require_labels).

    Raises:
        ValueError: unknown kind, split or options.
    """
    cls = dataset_class(kind, root)
    split = cls.resolve_split(split)
    common = {"img_size": img_size, "train": train, "cache_dir": cache_dir, "normalize": normalize}
    if cls is SyntheticLesions:
        n = opts.pop("n", _SYNTHETIC_N.get(split, 64))
        return SyntheticLesions(n, split, **common, **opts)
    if root is None:
        raise ValueError(f"dataset kind {kind!r} needs a root folder")
    return cls(root, split, **common, **opts)
