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
import io
import os
from pathlib import Path

import numpy as np

from fastmtl.data.base import CacheDir, MTLDataset
from fastmtl.data.tables import LabelTable, Problem, match_files, refuse, validate_rows
from fastmtl.files import read_text

__all__ = ["ISIC2017", "ISIC_CLASSES", "isic_label_table", "isic_split_name", "read_isic_labels"]

ISIC_CLASSES = ("melanoma", "seborrheic_keratosis", "nevus")
_FOLDER_INFIX = {"training": "Training", "validation": "Validation", "test": "Test_v2"}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_LABEL_COLUMNS = ("melanoma", "seborrheic_keratosis")


def isic_split_name(root: Path, split: str) -> str:
    """Maps "training" / "validation" / "test" (any alias, any case, or the official names) to the folder infix."""
    name = _FOLDER_INFIX[ISIC2017.resolve_split(split)]
    if name == "Test_v2" and not (root / "ISIC-2017_Test_v2_Data").is_dir() and (root / "ISIC-2017_Test_Data").is_dir():
        return "Test"  # the first test release had no "_v2"
    return name


def isic_label_table(csv_path: Path) -> LabelTable:
    """Every row of a Part 3 ground-truth CSV, validated (:func:`fastmtl.data.tables.validate_rows`: plain ids,
    labels 0 or 1, not both melanoma and seborrheic keratosis, no id twice); the problems are in the table.

    Raises:
        ValueError: a required column is missing.
    """
    with io.StringIO(read_text(csv_path, "label table"), newline="") as file:
        reader = csv.DictReader(file)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("image_id", *_LABEL_COLUMNS) if c not in columns]
        if missing:
            raise ValueError(
                f"{csv_path} lacks column(s) {missing}; expected image_id, melanoma, seborrheic_keratosis, "
                f"found {columns}"
            )
        rows = []
        for row in reader:
            row = {k.strip(): v for k, v in row.items() if k is not None}
            rows.append((reader.line_num, row["image_id"], [row[c] for c in _LABEL_COLUMNS]))
    return validate_rows(csv_path, rows, _LABEL_COLUMNS, exclusive=_LABEL_COLUMNS)


def _with_nevus(labels: np.ndarray) -> np.ndarray:
    """(N, 2) melanoma / seborrheic keratosis -> (N, 3) with nevus = neither."""
    nevus = (labels < 0.5).all(axis=1, keepdims=True)
    return np.concatenate([labels, nevus], axis=1).astype(np.float32)


def read_isic_labels(csv_path: Path) -> tuple[list[str], np.ndarray]:
    """Reads a Part 3 ground-truth CSV.

    Returns:
        (image ids, float32 (N, 3) labels melanoma / seborrheic keratosis / nevus).

    Raises:
        ValueError: a required column is missing, or a row breaks a rule of :func:`isic_label_table` (the message
            names the file, row and value of the first such row and counts the others).
    """
    table = isic_label_table(csv_path)
    refuse(table.problems)
    return table.ids, _with_nevus(table.labels)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in _IMAGE_SUFFIXES and path.stem.startswith("ISIC_") and "superpixels" not in path.stem


def _list_images(folder: Path) -> dict[str, Path]:
    """{id: image file} of the folder (``.jpg`` before ``.jpeg`` before ``.png`` when an id has several)."""
    found: dict[str, Path] = {}
    rank = {suffix: i for i, suffix in enumerate(_IMAGE_SUFFIXES)}
    for path in sorted(folder.iterdir(), key=lambda p: (p.stem, rank.get(p.suffix.lower(), 9))):
        if _is_image(path) and path.stem not in found:
            found[path.stem] = path
    return found


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
        ids, labels, has_labels, self.image_paths = self._read_ids(require_labels)
        self.mask_paths = self._mask_paths(ids)
        has_masks = [p is not None for p in self.mask_paths]
        self._finalize(ids, labels, has_labels, has_masks, groups=ids)

    def _read_ids(self, require_labels: bool) -> tuple[list[str], np.ndarray, np.ndarray, list[Path]]:
        """Ids, labels, has_labels and image paths: the CSV's rows that have an image (every problem of the table
        refused or, with ``strict_labels=False``, recorded), else every image of the folder."""
        present = _list_images(self.image_dir)
        if os.path.lexists(self.csv_path):
            table = isic_label_table(self.csv_path)
            paths = match_files(table, present.get, self.image_dir, present)
            self._table_problems(table.problems)
            return table.ids, _with_nevus(table.labels), np.ones(len(table.ids), dtype=bool), paths
        if require_labels:
            raise FileNotFoundError(
                f"ISIC 2017 label CSV {self.csv_path} not found (pass require_labels=False to load images only)"
            )
        ids = sorted(present)
        return ids, np.zeros((len(ids), 3), np.float32), np.zeros(len(ids), dtype=bool), [present[i] for i in ids]

    def _mask_paths(self, ids: list[str]) -> list[Path | None]:
        if not self.mask_dir.is_dir():
            return [None] * len(ids)
        paths = [self.mask_dir / f"{image_id}_segmentation.png" for image_id in ids]
        missing = {p for p in paths if not p.is_file()}
        if missing and self.strict_labels:
            names = sorted(p.name for p in missing)[:3]
            raise FileNotFoundError(f"{len(missing)} mask(s) missing in {self.mask_dir}, e.g. {names}")
        gone = [Problem(str(p), "missing mask", f"no mask in {self.mask_dir.name}") for p in sorted(missing)]
        self.label_problems += gone
        return [None if p in missing else p for p in paths]

    def _load(self, index: int) -> dict[str, np.ndarray]:
        return self._load_files(self.image_paths[index], self.mask_paths[index], "binary")
