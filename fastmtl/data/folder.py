"""A plain folder of images with optional masks and labels.

    root/[<split>/]images/<stem>.<png|jpg|jpeg|tif|tiff|bmp>
    root/[<split>/]masks/<stem>[ _mask | _segmentation ].<ext>      optional, per image optional
    root/[<split>/]labels.csv                                       optional: id/stem, then one column per class

When ``root/<split>/images`` exists that split folder is used (``<split>`` = train or training, val or
validation, test, or any other sub-folder name); otherwise ``root`` itself (the engine then carves train/val out
of it with :func:`~fastmtl.data.splits.split_indices`). Masks are binary by default (0/1 or 0/255, thresholded)
or class indices with ``seg_classes`` > 1. The class names are the ``labels.csv`` header.

An image without a row in an existing ``labels.csv`` is a sample without class labels, and one without a mask in
an existing ``masks/`` a sample without a mask: both are used, and both are notes in ``label_problems``
(``fastmtl check-data`` lists them), since either can be a forgotten file.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from fastmtl.data.base import CacheDir, MTLDataset
from fastmtl.data.io import IMAGE_EXTENSIONS
from fastmtl.data.tables import LabelTable, Problem, match_files, refuse, validate_rows
from fastmtl.files import read_text

__all__ = ["ImageFolder", "folder_label_table", "read_label_table"]

_MASK_SUFFIXES = ("", "_mask", "_segmentation")
_SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("val", "validation"), "test": ("test",)}


def folder_label_table(csv_path: Path) -> LabelTable:
    """Every row of ``labels.csv`` (first column the image id or stem, then one 0/1 column per class, named by the
    header) validated by :func:`fastmtl.data.tables.validate_rows`; ``a.png`` and ``a`` name the same image.

    Raises:
        ValueError: no header with at least one class column.
    """
    reader = csv.reader(io.StringIO(read_text(csv_path, "label table"), newline=""))
    rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    if not rows or len(rows[0][1]) < 2:
        raise ValueError(f"{csv_path} needs a header 'id,<class>,...' with at least one class column")
    names = tuple(cell.strip() for cell in rows[0][1][1:])
    cells = [(line, row[0], row[1:]) for line, row in rows[1:]]
    return validate_rows(csv_path, cells, names, key=lambda image_id: Path(image_id).stem)


def read_label_table(csv_path: Path) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """Reads ``labels.csv`` (see :func:`folder_label_table`).

    Returns:
        (class names, {stem: float32 (K,) labels}).

    Raises:
        ValueError: a malformed header, or a row breaking a rule (the message names the file, row and value of the
            first and counts the others).
    """
    table = folder_label_table(csv_path)
    refuse(table.problems)
    return table.columns, dict(zip(table.ids, table.labels, strict=True))


def _index_files(folder: Path) -> dict[str, Path]:
    """{stem: path} of the image files directly in ``folder``; special files and dangling links named like images
    are kept, so that the data screen reports them rather than leaving them out without a word."""
    files = sorted(p for p in folder.iterdir() if not p.is_dir() and p.suffix.lower() in IMAGE_EXTENSIONS)
    return {p.stem: p for p in files}


class ImageFolder(MTLDataset):
    """Images with optional masks and labels from a plain folder.

    Args:
        root: dataset folder (see module docstring).
        split: sub-folder to use when ``root/<split>/images`` exists; otherwise ignored.
        img_size: stored and output size.
        train: training augmentation.
        seg_classes: 1 for binary masks, else the number of classes incl. background (masks hold indices).
        **kwargs: forwarded to :class:`~fastmtl.data.base.MTLDataset`.
    """

    @classmethod
    def resolve_split(cls, name: str) -> str:
        """Known aliases give train / val / test / all; any other name is a sub-folder name and stays."""
        return cls.SPLITS.get(name.lower(), name)

    @classmethod
    def split_folder(cls, root: str | Path, split: str | None) -> Path | None:
        """``root/<folder>`` holding ``images/`` for ``split`` (either spelling of train / val), else None."""
        if not split:
            return None
        split = cls.resolve_split(split)
        found = (Path(root) / name for name in _SPLIT_FOLDERS.get(split, (split,)))
        return next((folder for folder in found if (folder / "images").is_dir()), None)

    @classmethod
    def own_val_split(cls, root: str | Path | None) -> str | None:
        """ "val" when ``root/val/images`` or ``root/validation/images`` exists."""
        return "val" if root is not None and cls.split_folder(root, "val") is not None else None

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        *,
        img_size: int | tuple[int, int] | None = 224,
        train: bool = False,
        cache_dir: CacheDir = None,
        seg_classes: int = 1,
        **kwargs,
    ) -> None:
        from fastmtl.metrics import default_seg_class_names  # sklearn: imported when a folder is read

        self.seg_classes = int(seg_classes)
        self.seg_class_names = default_seg_class_names(self.seg_classes)
        self.root = self.split_folder(root, split) or Path(root)
        image_dir = self.root / "images"
        if not image_dir.is_dir():
            raise FileNotFoundError(f"image folder {image_dir} not found (expected <root>/[<split>/]images/)")
        images = _index_files(image_dir)
        if not images:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir}")
        label_csv = self.root / "labels.csv"
        table = folder_label_table(label_csv) if os.path.lexists(label_csv) else None
        self.class_names = names = () if table is None else table.columns
        super().__init__(img_size=img_size, train=train, cache_dir=cache_dir, **kwargs)
        if table is not None:  # an image without a row is fine here (an unlabelled sample): a note
            match_files(table, images.get, image_dir, images, unlisted_note="used without class labels")
            self._table_problems(table.problems)
        table = {} if table is None else dict(zip(table.ids, table.labels, strict=True))
        stems = list(images)
        self.image_paths = [images[s] for s in stems]
        self.mask_paths = self._match_masks(stems)
        if (self.root / "masks").is_dir():  # so is an image without a mask beside others with one: a note
            self.label_problems += [
                Problem(str(images[s]), "missing mask", f"no {s}[_mask|_segmentation].<ext> in "
                        f"{self.root / 'masks'}; used without a mask", note=True)
                for s, mask in zip(stems, self.mask_paths, strict=True) if mask is None
            ]  # fmt: skip
        labels = np.stack([table.get(s, np.zeros(len(names), np.float32)) for s in stems])
        self._finalize(
            stems, labels, [s in table for s in stems], [p is not None for p in self.mask_paths], groups=stems
        )

    def _match_masks(self, stems: list[str]) -> list[Path | None]:
        mask_dir = self.root / "masks"
        if not mask_dir.is_dir():
            return [None] * len(stems)
        masks = _index_files(mask_dir)
        return [next((masks[s + sfx] for sfx in _MASK_SUFFIXES if s + sfx in masks), None) for s in stems]

    def _load(self, index: int) -> dict[str, np.ndarray]:
        rule = "binary" if self.seg_classes == 1 else "index"
        return self._load_files(self.image_paths[index], self.mask_paths[index], rule)
