"""Batch prediction: masks at each image's original size, a probabilities CSV, optional overlays.

Pipeline: the sorted inputs are decoded, resized to the model's ``img_size`` and normalised in DataLoader
workers (an unreadable file becomes a failure marker, so one corrupt image never stops a batch); the model
runs under ``inference_mode`` (bf16 autocast on CUDA) on pinned, non-blocking copies; the logits of each image
are upsampled bilinearly to its original size and thresholded (one channel: 0/255) or arg-maxed (class
indices); a background thread writes the PNGs while the next batch runs; ``probabilities.csv`` is written
atomically at the end. A CUDA out-of-memory error splits the batch in halves (and keeps the smaller size for
the batches after it) without losing or repeating an image.

Under ``torchrun`` (``WORLD_SIZE`` > 1) or an initialised process group, rank r takes inputs r::world of the
sorted list and writes ``probabilities.part<r>.csv``; rank 0 merges the parts into one CSV.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from fastmtl.data.cache import resize_image
from fastmtl.data.io import IMAGE_EXTENSIONS, ImageReadError, read_image
from fastmtl.data.transforms import normalize_image
from fastmtl.engine.checkpoint import load_model, model_config
from fastmtl.engine.evaluate import autocast_context, seg_to_classes
from fastmtl.engine.overlay import draw_overlay, save_png
from fastmtl.files import atomic_write_bytes, safe_name
from fastmtl.metrics import default_class_names, default_seg_class_names

__all__ = ["ImagePaths", "PredictSummary", "collate_predict", "collect_inputs", "image_ids", "predict"]

_GLOB_CHARS = "*?["
_LUMA = torch.tensor([0.299, 0.587, 0.114])


@dataclass
class PredictSummary:
    """What a prediction run did (in a sharded run every rank gets the totals over all ranks).

    ``images_per_s`` is images predicted / ``seconds``, the wall time from the first batch request to the last
    file written (decoding, inference and writing included; the slowest rank in a sharded run). ``rows`` are
    this process's CSV rows (rank 0: all of them).
    """

    n_images: int
    n_failed: int
    failures: list[tuple[str, str]]
    images_per_s: float
    csv_path: Path
    mask_dir: Path
    overlay_dir: Path | None = None
    seconds: float = 0.0
    world_size: int = 1
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)


# ----------------------------------------------------------------------------------------------- inputs
def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _expand(item: str | os.PathLike, base: Path | None = None) -> list[Path]:
    """A folder (recursive), a glob pattern or a file path; a missing plain path is kept (reported later)."""
    text = os.path.expanduser(str(item))
    path = Path(text)
    if base is not None and not path.is_absolute() and not path.exists() and (base / path).exists():
        path = base / path
    if path.is_dir():
        return [p for p in path.rglob("*") if p.is_file() and _is_image(p)]
    if any(c in text for c in _GLOB_CHARS) and not path.exists():
        return [Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file() and _is_image(Path(p))]
    return [path]


def _read_list(path: Path) -> list[Path]:
    lines = [line.strip() for line in path.read_text().splitlines()]
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
    """Unique file-name-safe ids: the path below the inputs' common folder, separators as "__", no suffix."""
    root = os.path.commonpath([str(p.parent) for p in paths])
    ids = [safe_name(os.path.relpath(p.with_suffix(""), root).replace(os.sep, "__")) for p in paths]
    seen: dict[str, int] = {}
    for i, (image_id, path) in enumerate(zip(ids, paths, strict=True)):
        if ids.count(image_id) > 1:  # same stem, different extension (or sanitised alike)
            candidate = f"{image_id}_{path.suffix.lstrip('.').lower()}"
            seen[candidate] = seen.get(candidate, 0) + 1
            ids[i] = candidate if seen[candidate] == 1 else f"{candidate}_{seen[candidate]}"
    return ids


# ----------------------------------------------------------------------------------------------- loading
class ImagePaths(Dataset):
    """Decodes, resizes and normalises images by path; a failure yields ``{"index", "error"}``, never raises.

    Args:
        paths: image files.
        size: model input (h, w).
        normalize: "imagenet", "raw" or "unit".
        in_chans: 3, or 1 for luminance.
    """

    def __init__(self, paths: Sequence[Path], size: tuple[int, int], normalize: str = "imagenet", in_chans: int = 3):
        self.paths, self.size, self.normalize, self.in_chans = list(paths), size, normalize, in_chans

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            pixels = read_image(self.paths[index])  # (H0, W0, 3) uint8
            resized = torch.from_numpy(np.array(resize_image(pixels, self.size)))  # a writable copy
        except ImageReadError as err:
            return {"index": index, "error": err.reason}
        except Exception as err:  # noqa: BLE001 - any decoder failure is reported per file, never fatal
            return {"index": index, "error": f"{type(err).__name__}: {err}"}
        image = resized.permute(2, 0, 1).contiguous()  # (3, h, w)
        if self.in_chans == 1:
            image = (image.float() * _LUMA[:, None, None]).sum(0, keepdim=True).round().to(torch.uint8)
        return {"index": index, "image": normalize_image(image, self.normalize), "orig_size": pixels.shape[:2]}


def collate_predict(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacks the decoded items; failures travel separately as ``failed``: list of (index, reason)."""
    ok = [item for item in items if "error" not in item]
    return {
        "index": torch.tensor([item["index"] for item in ok], dtype=torch.int64),  # (B,)
        "image": torch.stack([item["image"] for item in ok]) if ok else torch.empty(0),  # (B, C, h, w)
        "orig_size": torch.tensor([list(item["orig_size"]) for item in ok], dtype=torch.int64).reshape(-1, 2),
        "failed": [(item["index"], item["error"]) for item in items if "error" in item],
    }


# ----------------------------------------------------------------------------------------------- inference
class _Runner:
    """Forward + per-image postprocessing, splitting a batch in halves on CUDA out-of-memory."""

    def __init__(self, model: nn.Module, device: torch.device, threshold: float, log) -> None:
        self.model, self.device, self.threshold, self.log = model, device, threshold, log
        self.max_chunk: int | None = None  # learned from OOMs, applies to every later batch

    def __call__(self, images: torch.Tensor, sizes: torch.Tensor) -> list[tuple[np.ndarray | None, ...]]:
        n = images.shape[0]
        step = min(n, self.max_chunk or n)
        pending = [(s, min(s + step, n)) for s in range(0, n, step)][::-1]  # a stack, first chunk on top
        results = []
        while pending:
            start, stop = pending.pop()
            try:
                results.extend(self._infer(images[start:stop], sizes[start:stop]))
                continue
            except torch.cuda.OutOfMemoryError:
                if stop - start == 1:
                    raise
            # Outside the except block, so the traceback (and the tensors it pins) is gone before the retry.
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            mid = start + (stop - start + 1) // 2
            self.max_chunk = mid - start
            self.log(f"CUDA out of memory at batch {stop - start}; retrying in chunks of {self.max_chunk}")
            pending.extend([(mid, stop), (start, mid)])
        return results

    def _infer(self, images: torch.Tensor, sizes: torch.Tensor) -> list[tuple[np.ndarray | None, ...]]:
        x = images.to(self.device, non_blocking=True)  # (b, C, h, w)
        with torch.inference_mode(), autocast_context(self.device):
            out = self.model(x)
            probs = None if out.cls_logits is None else torch.sigmoid(out.cls_logits.float()).cpu().numpy()
            masks: list[np.ndarray | None] = [None] * x.shape[0]
            if out.seg_logits is not None:
                for i, (h, w) in enumerate(sizes.tolist()):
                    logits = F.interpolate(out.seg_logits[i : i + 1].float(), size=(h, w), mode="bilinear")
                    masks[i] = seg_to_classes(logits, self.threshold)[0].cpu().numpy()  # (H0, W0)
        return [(None if probs is None else probs[i], masks[i]) for i in range(x.shape[0])]


# ----------------------------------------------------------------------------------------------- writing
class _Writer:
    """Writes masks/overlays and builds CSV rows on a background thread; errors resurface in put()/close()."""

    def __init__(self, out: Path, overlays: bool, threshold: float, class_names, seg_names, seg_classes: int):
        self.mask_dir, self.overlay_dir = out / "masks", (out / "overlays" if overlays else None)
        self.mask_dir.mkdir(parents=True, exist_ok=True)
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
        if self.error is not None:
            raise RuntimeError(f"writing predictions failed: {self.error}") from self.error
        self.queue.put((path, image_id, probs, mask))

    def close(self) -> list[dict[str, Any]]:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise RuntimeError(f"writing predictions failed: {self.error}") from self.error
        return self.rows

    def _loop(self) -> None:
        while (job := self.queue.get()) is not None:
            if self.error is None:  # after an error keep draining so put() never blocks
                try:
                    self.rows.append(self._write(*job))
                except BaseException as err:  # noqa: B036 - handed to the main thread
                    self.error = err

    def _write(self, path: Path, image_id: str, probs: np.ndarray | None, mask: np.ndarray | None) -> dict:
        row: dict[str, Any] = {"path": str(path), "id": image_id}
        if probs is not None:
            row.update({f"prob_{c}": f"{p:.6f}" for c, p in zip(self.class_names, probs, strict=True)})
            row.update({f"pred_{c}": int(p > self.threshold) for c, p in zip(self.class_names, probs, strict=True)})
        if mask is not None:
            row["area_fraction"] = f"{float((mask > 0).mean()):.6f}"
            if self.seg_classes > 1:
                row.update({f"area_{c}": f"{float((mask == k).mean()):.6f}" for k, c in enumerate(self.seg_names, 1)})
            stored = mask * np.uint8(255) if self.seg_classes == 1 else mask
            row["mask"] = save_png(self.mask_dir / f"{image_id}.png", stored).name
            if self.overlay_dir is not None:
                save_png(self.overlay_dir / f"{image_id}.png", draw_overlay(read_image(path), mask))
        return row


def _csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    columns = list(dict.fromkeys(key for row in rows for key in row)) or ["path", "id"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: r["path"]))
    return buffer.getvalue().encode()


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


# ----------------------------------------------------------------------------------------------- distributed
def _init_distributed(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group) — torchrun sets WORLD_SIZE."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return 0, 1, False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), True


def _rank_device(device: torch.device, rank: int, world: int) -> torch.device:
    """One GPU per rank (LOCAL_RANK) when a sharded run asks for plain "cuda"."""
    if device.type != "cuda" or device.index is not None or world == 1:
        return device
    index = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _finish(out: Path, rows: list[dict], failures: list, n: int, seconds: float, rank: int, world: int) -> tuple:
    """Writes the CSV (merging per-rank parts on rank 0); returns (rows, failures, n, seconds) over all ranks."""
    csv_path = out / "probabilities.csv"
    if world > 1:
        atomic_write_bytes(out / f"probabilities.part{rank}.csv", _csv_bytes(rows))
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (n, failures, seconds))  # also the barrier: every part is on disk
        n, seconds = sum(g[0] for g in gathered), max(g[2] for g in gathered)
        failures = [f for g in gathered for f in g[1]]
        if rank == 0:
            parts = [out / f"probabilities.part{r}.csv" for r in range(world)]
            rows = [row for part in parts for row in _read_csv(part)]
            atomic_write_bytes(csv_path, _csv_bytes(rows))
            for part in parts:
                part.unlink()
    else:
        atomic_write_bytes(csv_path, _csv_bytes(rows))
    if failures and rank == 0:
        atomic_write_bytes(out / "failures.csv", _csv_bytes([{"path": p, "reason": r} for p, r in failures]))
    if world > 1:
        dist.barrier()  # nobody returns before rank 0 has written the merged CSV
    return rows, sorted(failures), n, seconds


# ----------------------------------------------------------------------------------------------- entry point
def _log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def _run(loader: DataLoader, runner: _Runner, writer: _Writer, paths: list[Path], ids: list[str], bar: bool) -> tuple:
    """The batch loop; returns (failures, number of images predicted)."""
    failures, n = [], 0
    for batch in tqdm(loader, desc="predict", unit="batch", disable=not bar, leave=False):
        for index, reason in batch["failed"]:
            failures.append((str(paths[index]), reason))
            _log(f"skipped {paths[index]}: {reason}")
        if batch["index"].numel() == 0:
            continue
        results = runner(batch["image"], batch["orig_size"])
        for index, (probs, mask) in zip(batch["index"].tolist(), results, strict=True):
            writer.put(paths[index], ids[index], probs, mask)
        n += len(results)
    return failures, n


def predict(
    checkpoint: str | os.PathLike,
    inputs: Any,
    output_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    num_workers: int = 2,
    device: str | torch.device = "cpu",
    overlays: bool = False,
    threshold: float = 0.5,
    img_size: int | None = None,
    optimize: bool = True,
    compile: bool = False,
) -> PredictSummary:
    """Predicts masks and class probabilities for a set of images.

    Args:
        checkpoint: ``<stem>.safetensors`` written by fastmtl (its meta may hold ``normalize`` and
            ``class_names``; defaults "imagenet" and the generic class0, class1, ...).
        inputs: see :func:`collect_inputs`.
        output_dir: receives ``masks/<id>.png`` (original size; binary 0/255, multi-class indices),
            ``probabilities.csv`` (path, id, prob_<class>, pred_<class>, area_fraction[, area_<class>], mask),
            ``failures.csv`` when some files could not be read, and ``overlays/<id>.png`` with ``overlays``.
        batch_size: images per forward (halved automatically on CUDA out-of-memory).
        num_workers: decoding workers.
        device: "cpu", "cuda", "cuda:1"; under torchrun plain "cuda" means the rank's LOCAL_RANK GPU.
        overlays: also write the prediction drawn on each image.
        threshold: probability above which a pixel is lesion (one seg channel) and a class is predicted.
        img_size: inference side; default the checkpoint's ``img_size``.
        optimize: run the model through :func:`fastmtl.inference.optimize_for_inference` (BN folded into the
            convolutions, channels_last, the Triton kernels and bf16 autocast on CUDA); same outputs within the
            tolerance table. False runs the checkpoint's model as it is.
        compile: also ``torch.compile`` the optimized model (worth it for large inputs; compiling takes minutes).

    Raises:
        FileNotFoundError: no input matches.
    """
    out = Path(output_dir)
    rank, world, owned = _init_distributed(torch.device(device))
    try:
        dev = _rank_device(torch.device(device), rank, world)
        paths = collect_inputs(inputs, exclude=[out / "masks", out / "overlays"])
        ids = image_ids(paths)  # over the full list, so every rank names files alike
        mine = list(range(rank, len(paths), world))
        model, dataset, writer = _setup(
            checkpoint, [paths[i] for i in mine], out, dev, img_size, threshold, overlays, optimize, compile
        )
        loader = DataLoader(
            dataset, batch_size, num_workers=num_workers, collate_fn=collate_predict, pin_memory=dev.type == "cuda"
        )
        start = time.perf_counter()
        try:
            runner = _Runner(model, dev, threshold, _log)
            failures, n = _run(loader, runner, writer, *_pick(paths, ids, mine), rank == 0)
        finally:
            rows = writer.close()
        seconds = time.perf_counter() - start
        rows, failures, n, seconds = _finish(out, rows, failures, n, seconds, rank, world)
    finally:
        if owned:
            dist.destroy_process_group()
    rate = n / max(seconds, 1e-9)
    summary = PredictSummary(
        n, len(failures), failures, rate, out / "probabilities.csv", writer.mask_dir, writer.overlay_dir, seconds,
        world, rows,
    )  # fmt: skip
    if rank == 0:
        print(
            f"predicted {n} image(s), {len(failures)} failed, in {seconds:.2f} s ({rate:.1f} images/s) on {world} "
            f"process(es); CSV {summary.csv_path}, masks in {summary.mask_dir}"
        )
    return summary


def _setup(checkpoint, paths, out: Path, dev: torch.device, img_size, threshold, overlays, optimize, compile):
    """Loads the model (optimized for inference unless told not to) and builds this rank's dataset and writer."""
    model, meta = load_model(checkpoint, device=dev)
    config = model_config(model)
    if optimize:
        from fastmtl.inference import optimize_for_inference

        model = optimize_for_inference(model, compile="default" if compile else False)
    k = config.cls_classes
    class_names = meta.get("class_names") or default_class_names(k)
    size = (img_size or config.img_size,) * 2
    dataset = ImagePaths(paths, size, meta.get("normalize", "imagenet"), config.in_chans)
    seg_names = meta.get("seg_class_names") or default_seg_class_names(config.seg_classes)
    return model, dataset, _Writer(out, overlays, threshold, class_names, seg_names, config.seg_classes)


def _pick(paths: list[Path], ids: list[str], indices: list[int]) -> tuple[list[Path], list[str]]:
    return [paths[i] for i in indices], [ids[i] for i in indices]
