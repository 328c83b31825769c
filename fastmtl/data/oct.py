"""Retinal OCT B-scans listed in a manifest (e.g. ``shared/data/oct/manifest.csv``).

Manifest columns: dataset, case_id, subject, vendor, image_path, mask_path, mask_encoding, height, width,
has_irf, has_srf, has_ped, has_fluid, fluid_frac. Paths are relative to the manifest's folder; an empty
``mask_path`` means no mask, an empty flag means the label is unknown. ``mask_encoding`` lists the stored
values, e.g. ``"0=bg,1=fluid(any)"`` (Duke DME) or ``"0=bg,1=IRF,2=SRF,3=PED"`` (RETOUCH); it is parsed into
a lookup table so masks stored with other values or orders map to the right classes.

Tasks: ``"fluid"`` = binary background / any fluid, label K=1 (has_fluid); ``"retouch"`` = 4 classes
background / IRF / SRF / PED, labels K=3 (has_irf, has_srf, has_ped). Splits are by subject.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np

from fastmtl.data.base import CacheDir, MTLDataset
from fastmtl.data.retouch import RETOUCH_CLASSES, RETOUCH_SEG_CLASSES
from fastmtl.data.splits import select_split
from fastmtl.data.tables import LabelTable, match_files, relative_path_error, validate_rows
from fastmtl.files import read_text

__all__ = ["OCTManifest", "parse_mask_encoding", "mask_lut"]

_COLUMNS = ("dataset", "case_id", "subject", "vendor", "image_path", "mask_path", "mask_encoding")
_TASKS = {  # task -> (class names, manifest label columns, seg_classes, foreground seg class names)
    "fluid": (("fluid",), ("has_fluid",), 1, ("fluid",)),  # one sigmoid channel, Dice loss
    "fluid-2class": (("fluid",), ("has_fluid",), 2, ("fluid",)),  # background/fluid softmax: Dice over both + focal
    "retouch": (RETOUCH_CLASSES, ("has_irf", "has_srf", "has_ped"), 4, RETOUCH_SEG_CLASSES),
}
_BACKGROUND = {"bg", "background", "none", "0"}
_RETOUCH_INDEX = {"irf": 1, "srf": 2, "ped": 3}


def parse_mask_encoding(text: str) -> dict[int, str]:
    """``"0=bg,1=IRF"`` -> {0: "bg", 1: "IRF"}; an encoding without ``value=name`` pairs gives {}."""
    pairs = re.findall(r"(\d+)\s*=\s*([^,;]+)", text or "")
    return {int(value): name.strip() for value, name in pairs}


def mask_lut(encoding: str, task: str) -> np.ndarray | str:
    """Lookup table (256,) from stored mask value to class index for ``task``, or a rule name.

    Raises:
        ValueError: the task is "retouch" and the encoding lacks IRF / SRF / PED.
    """
    classes = parse_mask_encoding(encoding)
    if task.startswith("fluid"):
        if not classes:
            return "binary"  # e.g. "0/255": threshold like any binary mask
        lut = np.ones(256, dtype=np.uint8)  # values not listed are treated as fluid too
        for value, name in classes.items():
            lut[value] = 0 if name.lower() in _BACKGROUND else 1
        return lut
    if not any(name.lower() in _RETOUCH_INDEX for name in classes.values()):
        raise ValueError(f"mask encoding {encoding!r} has no IRF/SRF/PED classes; use task='fluid'")
    lut = np.full(256, 255, dtype=np.uint8)  # unlisted values fail validation naming the file
    for value, name in classes.items():
        key = name.lower()
        if key not in _BACKGROUND and key not in _RETOUCH_INDEX:
            raise ValueError(f"mask encoding {encoding!r} has class {name!r}, which is not bg/IRF/SRF/PED")
        lut[value] = _RETOUCH_INDEX.get(key, 0)
    return lut


class OCTManifest(MTLDataset):
    """OCT B-scans from a manifest, one split by subject.

    Args:
        root: the manifest CSV or the folder holding ``manifest.csv``.
        split: "train", "val", "test" or "all".
        img_size: stored and output size.
        train: training augmentation.
        subset: keep rows whose ``dataset`` is this (e.g. "duke_dme", "retouch_sample"); None keeps all.
        task: "fluid" (binary mask, one sigmoid channel), "fluid-2class" (the same mask for a background/fluid
            softmax head, trained with the RETOUCH loss: Dice over both classes + focal) or "retouch" (IRF / SRF /
            PED, 4 classes).
        vendor: keep one vendor (case-insensitive); None keeps all.
        fractions: train / val / test shares of the subjects.
        seed: split seed.
        **kwargs: forwarded to :class:`~fastmtl.data.base.MTLDataset`.
    """

    @classmethod
    def own_val_split(cls, root: str | Path | None) -> str | None:
        """Always "val": the seeded split by subject is built into the dataset."""
        return "val"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        img_size: int | tuple[int, int] | None = 512,
        train: bool = False,
        cache_dir: CacheDir = None,
        subset: str | None = None,
        task: str = "fluid",
        vendor: str | None = None,
        fractions: tuple[float, float, float] = (0.75, 0.125, 0.125),
        seed: int = 1234,
        **kwargs,
    ) -> None:
        if task not in _TASKS:
            raise ValueError(f"task must be one of {sorted(_TASKS)}, got {task!r}")
        self.class_names, self._label_columns, self.seg_classes, self.seg_class_names = _TASKS[task]
        super().__init__(img_size=img_size, train=train, cache_dir=cache_dir, **kwargs)
        self.task, self.subset, self.split = task, subset, self.resolve_split(split)
        path = Path(root)
        self.manifest = path / "manifest.csv" if path.is_dir() else path
        base = self.manifest.parent
        rows = self._valid_rows(self._read_rows(subset, vendor), base)
        keep = select_split([r["subject"] for r in rows], self.split, fractions, seed)
        rows = [rows[i] for i in keep]
        self.image_paths = [base / r["image_path"] for r in rows]
        self.mask_paths = [base / r["mask_path"] if r["mask_path"].strip() else None for r in rows]
        self.rules = [r["_rule"] for r in rows]
        self.vendors = [r["vendor"] for r in rows]
        labels = np.array([r["_labels"] for r in rows], dtype=np.float32).reshape(len(rows), len(self.class_names))
        has_labels = ~np.isnan(labels).any(axis=1)
        ids = [r["_id"] for r in rows]
        has_masks = [p is not None for p in self.mask_paths]
        self._finalize(ids, np.nan_to_num(labels), has_labels, has_masks, groups=[r["subject"] for r in rows])

    def _read_rows(self, subset: str | None, vendor: str | None) -> list[dict[str, str]]:
        """The manifest's rows of ``subset`` and ``vendor``, each with its line number as ``"_line"``."""
        with io.StringIO(read_text(self.manifest, "OCT manifest"), newline="") as file:
            reader = csv.DictReader(file)
            missing = [c for c in _COLUMNS + self._label_columns if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{self.manifest} lacks column(s) {missing}; found {reader.fieldnames}")
            rows = [{**{k: v or "" for k, v in row.items() if k is not None}, "_line": reader.line_num}
                    for row in reader]  # fmt: skip
        available = sorted({r["dataset"] for r in rows})
        if subset is not None:
            rows = [r for r in rows if r["dataset"] == subset]
            if not rows:
                raise ValueError(f"no rows with dataset={subset!r} in {self.manifest}; available: {available}")
        if vendor is not None:
            rows = [r for r in rows if r["vendor"].lower() == vendor.lower()]
            if not rows:
                raise ValueError(f"no rows with vendor={vendor!r} (subset={subset!r}) in {self.manifest}")
        return rows

    def _valid_rows(self, rows: list[dict], base: Path) -> list[dict]:
        """The rows that pass the table rules (:mod:`fastmtl.data.tables`: paths inside the manifest's folder, flags
        0, 1 or empty, no case twice, the image and mask files there) and whose mask encoding suits the task, with
        ``"_id"``, ``"_labels"`` and ``"_rule"`` added. Every other row is refused or recorded (``strict_labels``)."""
        early, usable = LabelTable(self.manifest, ()), {}
        for r in rows:
            error = relative_path_error(r["image_path"])
            if r["mask_path"].strip():
                error = error or relative_path_error(r["mask_path"])
            if error:
                early.add(r["_line"], "path leaves the folder", error)
                continue
            try:
                r["_rule"] = mask_lut(r["mask_encoding"], self.task) if r["mask_path"].strip() else "index"
            except ValueError as err:
                early.add(r["_line"], "mask encoding", str(err))
                continue
            usable[r["_line"]] = r
        cells = [(line, f"{r['dataset']}/{r['case_id']}", [r[c] for c in self._label_columns])
                 for line, r in usable.items()]  # fmt: skip
        table = validate_rows(self.manifest, cells, self._label_columns, allow_unknown=True, plain_ids=False)
        table.found += early.found
        by_id = {case: usable[line] for case, line in zip(table.ids, table.lines, strict=True)}

        def image(case: str) -> Path | None:
            path = base / by_id[case]["image_path"]
            return path if path.is_file() else None

        match_files(table, image, base, expected=lambda case: by_id[case]["image_path"])
        good = []
        for case, values, line in zip(table.ids, table.rows, table.lines, strict=True):
            r = by_id[case]
            if r["mask_path"].strip() and not (base / r["mask_path"]).is_file():
                table.add(line, "missing mask", f"{case}: mask {r['mask_path']} not found in {base}")
                continue
            good.append({**r, "_id": case, "_labels": values})
        self._table_problems(table.problems)
        return good

    def _load(self, index: int) -> dict[str, np.ndarray]:
        return self._load_files(self.image_paths[index], self.mask_paths[index], self.rules[index])
