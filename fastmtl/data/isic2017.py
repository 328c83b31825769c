"""ISIC 2017 (Part 1 lesion segmentation + Part 3 diagnosis) in the official file layout.

    root/ISIC-2017_<Split>_Data/ISIC_0000000.jpg                        (``*_superpixels.png`` ignored)
    root/ISIC-2017_<Split>_Part1_GroundTruth/ISIC_0000000_segmentation.png  lesion mask 0/255
    root/ISIC-2017_<Split>_Part3_GroundTruth.csv                        image_id, melanoma, seborrheic_keratosis

``<Split>`` is Training, Validation or Test_v2. Labels are multi-label (K=3): melanoma, seborrheic keratosis
and nevus (= neither). A split without its mask folder still loads (``has_mask`` False); without its CSV it
loads only with ``require_labels=False`` (``has_label`` False, ids from the image folder).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fastmtl.data.base import CacheDir, MTLDataset, check_plain_id

__all__ = ["ISIC2017", "ISIC_CLASSES", "isic_split_name", "read_isic_labels"]

ISIC_CLASSES = ("melanoma", "seborrheic_keratosis", "nevus")
_FOLDER_INFIX = {"training": "Training", "validation": "Validation", "test": "Test_v2"}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def isic_split_name(root: Path, split: str) -> str:
    """Maps "training" / "validation" / "test" (any alias, any case, or the official names) to the folder infix."""
    name = _FOLDER_INFIX[ISIC2017.resolve_split(split)]
    if name == "Test_v2" and not (root / "ISIC-2017_Test_v2_Data").is_dir() and (root / "ISIC-2017_Test_Data").is_dir():
        return "Test"  # the first test release had no "_v2"
    return name


def read_isic_labels(csv_path: Path) -> tuple[list[str], np.ndarray]:
    """Reads a Part 3 ground-truth CSV.

    Returns:
        (image ids, float32 (N, 3) labels melanoma / seborrheic keratosis / nevus).

    Raises:
        ValueError: a required column is missing; an id is not a plain file name or is listed twice; a label is
            not 0 or 1, or an image is both melanoma and seborrheic keratosis.
    """
    with open(csv_path, newline="") as file:
        reader = csv.DictReader(file)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("image_id", "melanoma", "seborrheic_keratosis") if c not in columns]
        if missing:
            raise ValueError(
                f"{csv_path} lacks column(s) {missing}; expected image_id, melanoma, seborrheic_keratosis, "
                f"found {columns}"
            )
        ids, rows, seen = [], [], {}
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            image_id = check_plain_id(row["image_id"], f"{csv_path}:{line}")
            try:
                mel, sk = float(row["melanoma"]), float(row["seborrheic_keratosis"])
            except ValueError as err:
                raise ValueError(f"{csv_path}:{line}: non-numeric label in {row}") from err
            if mel not in (0.0, 1.0) or sk not in (0.0, 1.0):
                raise ValueError(f"{csv_path}:{line}: labels must be 0 or 1, got {mel} and {sk} for {image_id}")
            if mel and sk:
                raise ValueError(f"{csv_path}:{line}: {image_id} is labelled both melanoma and seborrheic keratosis")
            if image_id in seen:
                raise ValueError(f"{csv_path}:{line}: {image_id} is listed twice (also on line {seen[image_id]})")
            seen[image_id] = line
            ids.append(image_id)
            rows.append((mel, sk, float(mel < 0.5 and sk < 0.5)))
    return ids, np.asarray(rows, dtype=np.float32).reshape(-1, 3)


def _find_image(folder: Path, image_id: str) -> Path | None:
    for suffix in _IMAGE_SUFFIXES:
        path = folder / f"{image_id}{suffix}"
        if path.is_file():
            return path
    return None


class ISIC2017(MTLDataset):
    """One split of ISIC 2017.

    Args:
        root: folder holding the ``ISIC-2017_*`` folders and CSVs.
        split: "training", "validation" or "test" (or Training / Validation / Test_v2).
        img_size: stored and output size; default 224 as in the paper.
        train: training augmentation.
        require_labels: raise when the Part 3 CSV is missing (else load images without labels).
        **kwargs: forwarded to :class:`~fastmtl.data.base.MTLDataset` (normalize, cache_dir, in_chans, augment).
    """

    class_names = ISIC_CLASSES
    seg_classes = 1
    seg_class_names = ("lesion",)
    SPLITS = {
        "training": "training", "train": "training", "validation": "validation", "val": "validation",
        "test": "test", "test_v2": "test",
    }  # fmt: skip

    @classmethod
    def own_val_split(cls, root: str | Path | None) -> str | None:
        """ "validation" when the official ``ISIC-2017_Validation_Data/`` folder is there."""
        has_it = root is not None and (Path(root) / "ISIC-2017_Validation_Data").is_dir()
        return "validation" if has_it else None

    def __init__(
        self,
        root: str | Path,
        split: str = "training",
        *,
        img_size: int | tuple[int, int] | None = 224,
        train: bool = False,
        cache_dir: CacheDir = None,
        require_labels: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(img_size=img_size, train=train, cache_dir=cache_dir, **kwargs)
        self.root = Path(root)
        self.split = isic_split_name(self.root, split)
        prefix = self.root / f"ISIC-2017_{self.split}"
        self.image_dir = Path(f"{prefix}_Data")
        self.mask_dir = Path(f"{prefix}_Part1_GroundTruth")
        self.csv_path = Path(f"{prefix}_Part3_GroundTruth.csv")
        if not self.image_dir.is_dir():
            found = sorted(p.name for p in self.root.glob("ISIC-2017_*")) if self.root.is_dir() else []
            raise FileNotFoundError(f"ISIC 2017 image folder {self.image_dir} not found; {self.root} holds {found}")
        ids, labels, has_labels = self._read_ids(require_labels)
        self.image_paths = self._image_paths(ids)
        self.mask_paths = self._mask_paths(ids)
        has_masks = [p is not None for p in self.mask_paths]
        self._finalize(ids, labels, has_labels, has_masks, groups=ids)

    def _read_ids(self, require_labels: bool) -> tuple[list[str], np.ndarray, np.ndarray]:
        if self.csv_path.is_file():
            ids, labels = read_isic_labels(self.csv_path)
            return ids, labels, np.ones(len(ids), dtype=bool)
        if require_labels:
            raise FileNotFoundError(
                f"ISIC 2017 label CSV {self.csv_path} not found (pass require_labels=False to load images only)"
            )
        ids = sorted(
            p.stem
            for p in self.image_dir.iterdir()
            if p.suffix.lower() in _IMAGE_SUFFIXES and p.stem.startswith("ISIC_") and "superpixels" not in p.stem
        )
        return ids, np.zeros((len(ids), 3), dtype=np.float32), np.zeros(len(ids), dtype=bool)

    def _image_paths(self, ids: list[str]) -> list[Path]:
        paths = [_find_image(self.image_dir, image_id) for image_id in ids]
        missing = [image_id for image_id, path in zip(ids, paths, strict=True) if path is None]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image id(s) listed in {self.csv_path.name} have no image in {self.image_dir}, "
                f"e.g. {missing[:3]}"
            )
        return paths

    def _mask_paths(self, ids: list[str]) -> list[Path | None]:
        if not self.mask_dir.is_dir():
            return [None] * len(ids)
        paths = [self.mask_dir / f"{image_id}_segmentation.png" for image_id in ids]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} mask(s) missing in {self.mask_dir}, e.g. {missing[:3]}")
        return paths

    def _load(self, index: int) -> dict[str, np.ndarray]:
        return self._load_files(self.image_paths[index], self.mask_paths[index], "binary")
