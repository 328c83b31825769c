"""Prediction outputs: masks, overlays and CSV rows written on a background thread; the CSVs, merged over ranks.

:class:`PredictionWriter` writes each image's mask (and overlay) while the next batch runs; :func:`write_tables`
writes ``probabilities.csv`` (rank 0 merging the per-rank parts of a sharded run) and ``failures.csv``.
"""

from __future__ import annotations

import csv
import io
import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fastmtl.data.io import read_image
from fastmtl.engine.distributed import DistInfo, all_gather_objects, barrier
from fastmtl.engine.overlay import prediction_overlay
from fastmtl.files import DiskFullError, atomic_write_bytes, is_disk_full, replacing, shown_path

__all__ = ["MARKER", "PredictionWriter", "start_clean", "write_tables"]

MARKER = ".fastmtl-predict"
_TABLES = ("probabilities.csv", "failures.csv")


def start_clean(out: Path) -> None:
    """Removes what an earlier prediction into ``out`` wrote (masks, overlays, CSVs, a killed run's partial
    outputs) and marks ``out`` as a prediction folder.

    Raises:
        ValueError: ``out/masks`` or ``out/overlays`` holds files no fastmtl prediction wrote (e.g. ``--out``
            points at a dataset's folder): nothing is removed.
    """
    ours = (out / MARKER).is_file() or (out / "probabilities.csv").is_file()
    folders = [out / "masks", out / "overlays"]
    if not ours:
        foreign = [f for folder in folders if folder.is_dir() for f in folder.iterdir()]
        if foreign:
            raise ValueError(
                f"{foreign[0].parent} holds files that fastmtl predict did not write ({foreign[0].name}, ...); "
                "pick another --out"
            )
    for folder in folders:
        if folder.is_dir():
            for file in folder.iterdir():
                if file.is_file() and (file.suffix == ".png" or file.name.endswith(".tmp")):
                    file.unlink()
    for name in [*_TABLES, *(p.name for p in out.glob("probabilities.part*.csv"))]:
        (out / name).unlink(missing_ok=True)
    atomic_write_bytes(out / MARKER, b"fastmtl predict output folder: a rerun replaces what is here\n")


class PredictionWriter:
    """Writes masks/overlays and builds CSV rows on a background thread; errors resurface in put()/close()."""

    def __init__(self, out: Path, overlays: bool, threshold: float, class_names, seg_names, seg_classes: int):
        self.mask_dir, self.overlay_dir = out / "masks", (out / "overlays" if overlays else None)
        # masks/ and overlays/ are made with their first file (_save), so a run that fails first leaves none
        self.threshold, self.class_names, self.seg_names, self.seg_classes = (
            threshold,
            class_names,
            seg_names,
            seg_classes,
        )
        self.rows: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.queue: queue.Queue = queue.Queue(maxsize=16)
        self.thread = threading.Thread(target=self._loop, name="fastmtl-predict-writer", daemon=True)
        self.thread.start()

    def put(self, path: Path, image_id: str, probs: np.ndarray | None, mask: np.ndarray | None) -> None:
        self._raise()
        self.queue.put((path, image_id, probs, mask))

    def _raise(self) -> None:
        if isinstance(self.error, (OSError, ValueError)):  # a full disk, a bad file: one line, named
            raise self.error
        if self.error is not None:
            raise RuntimeError(f"writing predictions failed: {self.error}") from self.error

    def close(self) -> list[dict[str, Any]]:
        """Waits for the queued images; returns the rows (each one's mask and overlay are on disk).

        Raises:
            DiskFullError / OSError / RuntimeError: a write failed (``rows`` still lists what was written)."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        self._raise()
        return self.rows

    def salvage(self, out: Path, error: BaseException) -> BaseException:
        """After ``error`` stopped the run: waits for the writer, writes ``probabilities.csv`` listing exactly the
        images whose files are on disk and returns the error to raise (for an ``OSError``, such as a full disk,
        one that also says what the folder holds; other errors as they are)."""
        try:
            self.close()
        except BaseException:  # noqa: BLE001, S110 - the error that stopped the run is the one to report
            pass
        if not isinstance(error, OSError):
            return error
        written, dropped = len(self.rows), 0
        while True:
            try:
                atomic_write_bytes(out / "probabilities.csv", _csv_bytes(self.rows))
                listed = f"{out / 'probabilities.csv'} lists the {len(self.rows)} image(s) whose masks were written"
                if dropped:
                    listed += f" ({dropped} of the {written} masks removed to make room for it)"
                break
            except OSError as csv_error:
                freed = self._make_room(len(_csv_bytes(self.rows)) + 4096) if is_disk_full(csv_error) else 0
                if not freed:
                    listed = f"{len(self.rows)} mask(s) were written but no probabilities.csv lists them"
                    break
                dropped += freed
        kind = DiskFullError if isinstance(error, DiskFullError) else OSError
        return kind(f"{error}; {listed}: free space and run predict again")

    def _make_room(self, needed: int) -> int:
        """Removes the files of the images written last (and their rows) until ``needed`` bytes are free; returns
        how many images it removed (0: none left, or rows without files). A rerun recomputes them anyway."""
        removed, freed = 0, 0
        while self.rows and freed < needed and "mask" in self.rows[-1]:
            name = self.rows.pop()["mask"]
            for folder in (self.mask_dir, self.overlay_dir):
                if folder is not None and (folder / name).is_file():
                    freed += (folder / name).stat().st_blocks * 512  # what the file system gets back
                    (folder / name).unlink()
            removed += 1
        return removed

    def _loop(self) -> None:
        while (job := self.queue.get()) is not None:
            if self.error is None:  # after an error keep draining so put() never blocks
                try:
                    self.rows.append(self._write(*job))
                except BaseException as err:  # noqa: B036 - handed to the main thread
                    self.error = err

    def _write(self, path: Path, image_id: str, probs: np.ndarray | None, mask: np.ndarray | None) -> dict:
        row: dict[str, Any] = {"path": shown_path(path), "id": image_id}
        if probs is not None:
            row.update({f"prob_{c}": f"{p:.6f}" for c, p in zip(self.class_names, probs, strict=True)})
            row.update({f"pred_{c}": int(p > self.threshold) for c, p in zip(self.class_names, probs, strict=True)})
        if mask is not None:
            row["area_fraction"] = f"{float((mask > 0).mean()):.6f}"
            if self.seg_classes > 1:
                row.update({f"area_{c}": f"{float((mask == k).mean()):.6f}" for k, c in enumerate(self.seg_names, 1)})
            stored = mask * np.uint8(255) if self.seg_classes == 1 else mask
            mask_path = _save(self.mask_dir / f"{image_id}.png", stored, f"the mask of {path.name}")
            row["mask"] = mask_path.name
            if self.overlay_dir is not None:
                drawn = prediction_overlay(read_image(path), mask, image_id, probs, self.class_names, self.seg_names,
                                           threshold=self.threshold)  # fmt: skip
                try:
                    _save(self.overlay_dir / f"{image_id}.png", drawn, f"the overlay of {path.name}")
                except BaseException:
                    mask_path.unlink(missing_ok=True)  # the outputs list only images whose files are all there
                    raise
        return row


def _save(path: Path, array: np.ndarray, what: str) -> Path:
    """Writes a PNG through a temporary file: a full disk or a kill leaves no partial file (a full disk raises
    :class:`~fastmtl.files.DiskFullError` naming the folder)."""
    with replacing(path, what=what) as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")
    return path


def _csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    columns = list(dict.fromkeys(key for row in rows for key in row)) or ["path", "id"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: r["path"]))
    return buffer.getvalue().encode("utf-8", "backslashreplace")  # a stray surrogate (a reason quoting a name)


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def write_tables(out: Path, rows: list[dict], failures: list, n: int, seconds: float, world: DistInfo) -> tuple:
    """Writes the CSVs (rank 0 merging per-rank parts); returns (rows, failures, n, seconds) over all ranks.

    Collective in a sharded run: every rank must call it.
    """
    csv_path, rank = out / "probabilities.csv", world.rank
    if world.distributed:
        atomic_write_bytes(out / f"probabilities.part{rank}.csv", _csv_bytes(rows))
        gathered = all_gather_objects(world, (n, failures, seconds))  # also the barrier: every part is on disk
        n, seconds = sum(g[0] for g in gathered), max(g[2] for g in gathered)
        failures = [f for g in gathered for f in g[1]]
        if rank == 0:
            parts = [out / f"probabilities.part{r}.csv" for r in range(world.world_size)]
            rows = [row for part in parts for row in _read_csv(part)]
            atomic_write_bytes(csv_path, _csv_bytes(rows))
            for part in parts:
                part.unlink()
    else:
        after = f"the masks of {len(rows)} image(s) are in {out / 'masks'} but no CSV lists them: free space and "
        atomic_write_bytes(csv_path, _csv_bytes(rows), after=after + "run predict again")
    if failures and rank == 0:
        atomic_write_bytes(out / "failures.csv", _csv_bytes([{"path": p, "reason": r} for p, r in failures]))
    barrier(world)  # nobody returns before rank 0 has written the merged CSV
    return rows, sorted(failures), n, seconds
