"""Batch prediction: masks at each image's original size, a probabilities CSV, optional overlays.

Pipeline: the inputs (:mod:`fastmtl.data.inputs`) are decoded, resized to the model's ``img_size`` and
normalised in DataLoader workers (:class:`fastmtl.data.images.ImagePaths`: an unreadable file becomes a failure
marker, so one corrupt image never stops a batch); the request (``precision``, ``runtime``, ``compile``,
``optimize``) is checked before any work, resolved once into an inference path and built once
(:mod:`fastmtl.inference.resolve`, :mod:`fastmtl.inference.build`: bf16 autocast on CUDA by default); the built
model runs under ``inference_mode`` on pinned, non-blocking copies (:class:`.runner.ChunkedRunner`: the logits of
each image are upsampled bilinearly to its original size and thresholded (one channel: 0/255) or arg-maxed (class
indices); a CUDA out-of-memory error splits the batch in halves without losing or repeating an image); a
background thread writes the PNGs while the next batch runs and ``probabilities.csv`` is written atomically at the
end (:mod:`fastmtl.engine.predict.writer`).

The output folder is locked for the run (:func:`fastmtl.files.exclusive_folder`: a second job into it is refused
with the holder's name), and a rerun into a folder an earlier prediction used starts clean
(:func:`~fastmtl.engine.predict.writer.start_clean`), so the masks, ``probabilities.csv`` and ``failures.csv``
always describe exactly one run, also after a killed one.

Under ``torchrun`` (``WORLD_SIZE`` > 1) or an initialised process group (:mod:`fastmtl.engine.distributed`), rank
r takes inputs r::world of the sorted list and writes ``probabilities.part<r>.csv``; rank 0 merges the parts into
one CSV.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from fastmtl.checkpoint.meta import warn_if_synthetic
from fastmtl.checkpoint.store import load_model, model_config, read_checkpoint_info, stored_class_names
from fastmtl.data.images import ImagePaths, collate_predict
from fastmtl.data.inputs import collect_inputs, image_ids
from fastmtl.engine.distributed import barrier, cleanup, init_distributed
from fastmtl.engine.predict.runner import ChunkedRunner
from fastmtl.engine.predict.writer import PredictionWriter, start_clean, write_tables
from fastmtl.files import exclusive_folder, shown_path
from fastmtl.inference.build import build
from fastmtl.inference.path import Request, Sample
from fastmtl.inference.resolve import resolve
from fastmtl.options import check_input_side
from fastmtl.runtime import cpu_info

__all__ = ["ImagePaths", "PredictSummary", "collate_predict", "collect_inputs", "image_ids", "predict"]


@dataclass
class PredictSummary:
    """What a prediction run did (in a sharded run every rank gets the totals over all ranks).

    ``images_per_s`` is images predicted / ``seconds``, the wall time from the first batch request to the last
    file written (decoding, inference and writing included; the slowest rank in a sharded run). ``rows`` are
    this process's CSV rows (rank 0: all of them); ``precision`` the name of the path that ran
    (:class:`~fastmtl.inference.path.InferencePath`).
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
    precision: str = ""


def _log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def _run(
    loader: DataLoader, runner: ChunkedRunner, writer: PredictionWriter, paths: list[Path], ids: list[str], bar: bool
) -> tuple:
    """The batch loop; returns (failures, number of images predicted)."""
    failures, n = [], 0
    for batch in tqdm(loader, desc="predict", unit="batch", disable=not bar, leave=False):
        for index, reason in batch["failed"]:
            failures.append((shown_path(paths[index]), reason))
            _log(f"skipped {shown_path(paths[index])}: {reason}")
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
    precision: str = "auto",
    calibrate: Any = None,
    runtime: str = "auto",
) -> PredictSummary:
    """Predicts masks and class probabilities for a set of images.

    Args:
        checkpoint: ``<stem>.safetensors`` written by fastmtl (its meta may hold ``normalize`` and
            the dataset's ``class_names`` / ``seg_class_names``; defaults "imagenet" and, for a checkpoint without
            names, the generic class0, class1, ...).
        inputs: see :func:`collect_inputs`.
        output_dir: receives ``masks/<id>.png`` (original size; binary 0/255, multi-class indices),
            ``probabilities.csv`` (path, id, prob_<class>, pred_<class>, area_fraction[, area_<class>], mask),
            ``failures.csv`` when some files could not be read, and ``overlays/<id>.png`` with ``overlays``.
        batch_size: images per forward (halved automatically on CUDA out-of-memory).
        num_workers: decoding workers.
        device: "auto", "cpu", "cuda", "cuda:1"; under torchrun a CUDA device means the rank's LOCAL_RANK GPU.
        overlays: also write the prediction drawn on each image.
        threshold: probability above which a pixel is lesion (one seg channel) and a class is predicted.
        img_size: inference side; default the checkpoint's ``img_size``. It must be one the checkpoint's model
            takes (:func:`fastmtl.options.check_input_side`), checked before any work.
        optimize: run the model through :func:`fastmtl.inference.optimize.optimize_for_inference` (BN folded into the
            convolutions, channels_last, the Triton kernels and bf16 autocast on CUDA); same outputs within the
            tolerance table. False runs the checkpoint's model as it is.
        compile: also ``torch.compile`` the optimized model (worth it for large inputs; compiling takes minutes).
        precision: ``auto``, ``fp32``, ``bf16``, ``fp16`` or ``int8`` (:mod:`inference.path`): ``auto`` is bf16
            on CUDA and, on a CPU, the fastest path within tolerance of fp32 on a sample of the inputs (measured
            for jobs of :data:`~inference.precision.AUTO_MIN_IMAGES` images or more, then cached); the path taken is
            printed and stored in ``PredictSummary.precision``.
        calibrate: images to calibrate int8 / ``auto`` on (anything :func:`collect_inputs` takes); default the
            first images of ``inputs``. ONNX Runtime's and OpenVINO's int8 are calibrated once per checkpoint and
            image size and cached; giving ``calibrate`` calibrates them again.
        runtime: ``auto``, ``torch``, ``onnxruntime`` (CPU fp32 / int8) or ``openvino`` (CPU fp32 / bf16 / int8)
            for an explicit ``precision`` (:func:`fastmtl.inference.path.auto_runtime`); ``auto`` precision picks its
            own.

    Raises:
        FileNotFoundError: no input matches.
        ValueError: an unknown ``precision`` or ``runtime`` (the message lists the choices), a combination no path
            serves, or an ``img_size`` the checkpoint's model does not take (the message lists the ones it does);
            all before the model is loaded.
    """
    request = Request(precision, runtime, compile, optimize)  # checked once, here, before any work
    if not 0.0 < threshold < 1.0:  # NaN fails too
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"batch_size must be >= 1 and num_workers >= 0; got {batch_size}, {num_workers}")
    if img_size is not None:  # before any work: the model's rule, from the checkpoint's header
        stored, _ = read_checkpoint_info(checkpoint)
        check_input_side(img_size, stored.name, stored.img_size, str(checkpoint))
    out = Path(output_dir)
    world = init_distributed(str(device))
    rank, dev = world.rank, world.device
    try:
        with exclusive_folder(out, "predict", enabled=rank == 0):
            paths = collect_inputs(inputs, exclude=[out / "masks", out / "overlays"])
            ids = image_ids(paths)  # over the full list, so every rank names files alike
            mine = list(range(rank, len(paths), world.world_size))
            model, dataset, writer = _setup(
                checkpoint, [paths[i] for i in mine], out, dev, img_size, threshold, overlays
            )
            sample = Sample.from_images(dataset, batch_size, calibrate, device=dev)
            path = resolve(request, device=dev, cpu=cpu_info(), n_images=len(dataset), sample=sample, model=model,
                           checkpoint=checkpoint, log=_log)  # fmt: skip
            net = build(path, model, sample, log=_log)
            if rank == 0:  # only once the inputs and the model are good: a typo must not cost the earlier results
                _log(f"path: {path.name}")
                start_clean(out)
            barrier(world)  # no rank writes before rank 0 has cleared an earlier run's outputs
            loader = DataLoader(
                dataset, batch_size, num_workers=num_workers, collate_fn=collate_predict, pin_memory=dev.type == "cuda"
            )
            start = time.perf_counter()
            try:
                runner = ChunkedRunner(net, dev, threshold, _log)
                failures, n = _run(loader, runner, writer, *_pick(paths, ids, mine), rank == 0)
                rows = writer.close()
            except BaseException as error:  # a full disk: the CSV lists exactly the images whose masks exist
                reported = error if world.distributed else writer.salvage(out, error)
                if reported is error:
                    raise
                raise reported from error
            seconds = time.perf_counter() - start
            rows, failures, n, seconds = write_tables(out, rows, failures, n, seconds, world)
    finally:
        cleanup(world)
    rate = n / max(seconds, 1e-9)
    summary = PredictSummary(
        n, len(failures), failures, rate, out / "probabilities.csv", writer.mask_dir, writer.overlay_dir, seconds,
        world.world_size, rows, path.name,
    )  # fmt: skip
    if rank == 0:
        print(
            f"predicted {n} image(s), {len(failures)} failed, in {seconds:.2f} s ({rate:.1f} images/s) on "
            f"{world.world_size} process(es); CSV {summary.csv_path}, masks in {summary.mask_dir}"
        )
    return summary


def _setup(checkpoint, paths, out: Path, dev: torch.device, img_size, threshold, overlays):
    """Loads the model and builds this rank's dataset and writer."""
    model, meta = load_model(checkpoint, device=dev)
    warn_if_synthetic(meta, checkpoint)
    config = model_config(model)
    class_names, seg_names = stored_class_names(config, meta)
    size = (img_size or config.img_size,) * 2
    dataset = ImagePaths(paths, size, meta.get("normalize", "imagenet"), config.in_chans)
    return model, dataset, PredictionWriter(out, overlays, threshold, class_names, seg_names, config.seg_classes)


def _pick(paths: list[Path], ids: list[str], indices: list[int]) -> tuple[list[Path], list[str]]:
    return [paths[i] for i in indices], [ids[i] for i in indices]
