"""Batch prediction: masks at each image's original size, a probabilities CSV, optional overlays.

Pipeline: the inputs (:mod:`fastmtl.data.inputs`) are decoded, resized to the model's ``img_size`` and
normalised in DataLoader workers (:class:`fastmtl.data.images.ImagePaths`: an unreadable file becomes a failure
marker, so one corrupt image never stops a batch); the model runs under ``inference_mode`` (bf16 autocast on CUDA)
on pinned, non-blocking copies (:class:`fastmtl.engine.predict.runner.ChunkedRunner`: the logits of each image
are upsampled bilinearly to its original size and thresholded (one channel: 0/255) or arg-maxed (class indices);
a CUDA out-of-memory error splits the batch in halves without losing or repeating an image); a background thread
writes the PNGs while the next batch runs and ``probabilities.csv`` is written atomically at the end
(:mod:`fastmtl.engine.predict.writer`).

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
from fastmtl.data.inputs import collect_inputs, image_ids, sample_batches
from fastmtl.engine.distributed import barrier, cleanup, init_distributed
from fastmtl.engine.predict.runner import ChunkedRunner
from fastmtl.engine.predict.writer import PredictionWriter, start_clean, write_tables
from fastmtl.files import exclusive_folder, shown_path
from fastmtl.inference import onnxrt, openvino_rt
from fastmtl.inference.precision import (
    CALIBRATION_IMAGES,
    PRECISIONS,
    RUNTIMES,
    PrecisionUnavailable,
    build_path,
    choose_precision,
    path_name,
    plan_auto,
    resolve_runtime,
)
from fastmtl.options import check_input_side

__all__ = ["ImagePaths", "PredictSummary", "collate_predict", "collect_inputs", "image_ids", "predict"]


@dataclass
class PredictSummary:
    """What a prediction run did (in a sharded run every rank gets the totals over all ranks).

    ``images_per_s`` is images predicted / ``seconds``, the wall time from the first batch request to the last
    file written (decoding, inference and writing included; the slowest rank in a sharded run). ``rows`` are
    this process's CSV rows (rank 0: all of them); ``precision`` the numeric path that ran (:mod:`inference.precision`).
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
        precision: ``auto``, ``fp32``, ``bf16``, ``fp16`` or ``int8`` (:mod:`inference.precision`): ``auto`` is bf16
            on CUDA and, on a CPU, the fastest path within tolerance of fp32 on a sample of the inputs (measured
            for jobs of :data:`~inference.precision.AUTO_MIN_IMAGES` images or more, then cached); the path taken is
            printed and stored in ``PredictSummary.precision``.
        calibrate: images to calibrate int8 / ``auto`` on (anything :func:`collect_inputs` takes); default the
            first images of ``inputs``. ONNX Runtime's and OpenVINO's int8 are calibrated once per checkpoint and
            image size and cached; giving ``calibrate`` calibrates them again.
        runtime: ``auto``, ``torch``, ``onnxruntime`` (CPU fp32 / int8) or ``openvino`` (CPU fp32 / bf16 / int8)
            for an explicit ``precision`` (:func:`inference.precision.resolve_runtime`); ``auto`` precision picks its
            own.

    Raises:
        FileNotFoundError: no input matches.
        ValueError: an ``img_size`` the checkpoint's model does not take (the message lists the ones it does).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    if not optimize and (precision not in ("auto", "fp32") or runtime in ("onnxruntime", "openvino")):
        raise ValueError(f"precision {precision!r} on runtime {runtime!r} needs the optimized model; drop "
                         "--no-optimize")  # fmt: skip
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
            model, path = _inference_path(
                model, checkpoint, dataset, batch_size, optimize, compile, precision, runtime, calibrate
            )
            if rank == 0:  # only once the inputs and the model are good: a typo must not cost the earlier results
                _log(f"path: {path}")
                start_clean(out)
            barrier(world)  # no rank writes before rank 0 has cleared an earlier run's outputs
            loader = DataLoader(
                dataset, batch_size, num_workers=num_workers, collate_fn=collate_predict, pin_memory=dev.type == "cuda"
            )
            start = time.perf_counter()
            try:
                runner = ChunkedRunner(model, dev, threshold, _log)
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
        world.world_size, rows, path,
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


def _inference_path(model, checkpoint, dataset: ImagePaths, batch_size: int, optimize, compile, precision, runtime,
                    calibrate):  # fmt: skip
    """(model to run, description of the path). A precision this machine cannot run falls back to fp32 with the
    reason; ``auto`` on a large CPU job, int8 and compiled paths are built on a sample of the images (or of
    ``calibrate``)."""
    if not optimize:
        return model, "fp32, the checkpoint's model as saved (--no-optimize)"
    device = next(model.parameters()).device
    shaped = [torch.zeros(batch_size, dataset.in_chans, *dataset.size, device=device)]  # what the uncompiled
    sample = shaped  # float paths need; int8, compiled paths and measuring look at images
    if precision == "auto":
        if device.type == "cpu" and onnxrt.missing():
            _log(
                f"auto: {onnxrt.missing()} (its fp32 and int8 are the fastest CPU paths measured: README, Performance)"
            )
        elif device.type == "cpu" and openvino_rt.missing():
            _log(f"auto: {openvino_rt.missing()} (its int8 is the fastest CPU path measured: README, Performance)")
        plan = plan_auto(device, checkpoint, shaped[0].shape, len(dataset), model=model)
        if plan is not None:
            _log(f"auto: {plan.describe()}{'' if plan.cached else '; --precision chooses another'}")
            precision, compile, runtime = plan.precision, plan.compile or compile, plan.runtime
    if precision in ("auto", "int8") or compile:
        source = dataset if calibrate is None else ImagePaths(collect_inputs(calibrate), dataset.size,
                                                              dataset.normalize, dataset.in_chans)  # fmt: skip
        images = CALIBRATION_IMAGES if precision in ("auto", "int8") else batch_size
        sample = sample_batches(source, batch_size, -(-images // batch_size), device)
        if not sample:  # nothing readable: the batch loop reports every file; the plain path is enough for that
            _log("no readable image to calibrate or compile on; running fp32")
            precision, compile, runtime, sample = "fp32", False, "torch", shaped
    if precision == "auto":
        net, decision = choose_precision(model, checkpoint, sample, n_images=len(dataset), log=_log)
        return net, decision.describe()
    try:
        net = build_path(model, precision, sample[0], compile=compile, runtime=runtime, calibration=sample,
                         refresh=calibrate is not None, log=_log)  # fmt: skip
    except PrecisionUnavailable as e:
        _log(f"precision {precision} is not available here: {e}; running fp32 instead")
        precision, runtime, net = "fp32", "torch", build_path(model, "fp32", sample[0], compile=compile)
    return net, path_name(precision, compile, resolve_runtime(runtime, precision, device))


def _pick(paths: list[Path], ids: list[str], indices: list[int]) -> tuple[list[Path], list[str]]:
    return [paths[i] for i in indices], [ids[i] for i in indices]
