"""Export a checkpoint for deployment: an AOTInductor package (``.pt2``) or an ONNX file, checked against eager.

AOTInductor (``format="aoti"``): ``torch.export.export`` of the BN-folded model, compiled ahead of time by
Inductor into a shared library inside a ``.pt2`` package that Python (``torch._inductor.aoti_load_package``) and
C++ (``torch::inductor::AOTIModelPackageLoader``, see ``cpp/fastmtl_infer.cpp``) load without Python model code.
The package's metadata carries what a runner needs to pre- and post-process like ``fastmtl predict``:
``img_size``, ``in_chans``, ``seg_classes``, ``cls_classes``, ``mean``/``std`` (per channel, 0..255 units),
``class_names`` and ``seg_class_names`` (comma-separated; the training dataset's, read from the checkpoint's
metadata, or the generic ``class0..`` / ``class1..`` for a checkpoint without them), ``outputs``
(``seg_logits,cls_logits`` minus the absent ones, in the package's output order), ``model`` and
``fastmtl_version``.

ONNX (``format="onnx"``): ``torch.onnx.export(..., dynamo=True)``; needs ``pip install onnx onnxscript``
(and ``onnxruntime`` for the parity check). The same metadata is stored as the model's ``metadata_props``.

The input is one float32 ``(B, in_chans, img_size, img_size)`` batch, normalised as ``predict`` does; the batch
dimension is dynamic (1..1024) unless ``dynamic_batch=False``. The export always uses the PyTorch reference
layers (Inductor generates its own kernels for the graph).

An export prints each step as it starts (loading, tracing, compiling, checking) and how long it took: compiling
a package takes minutes on a CPU. An ``img_size`` the checkpoint's model does not take is refused before
any of it (:func:`fastmtl.options.check_input_side`). Exporting for the CPU drops torch's "No CUDA runtime is
found" warning (that one message, while the export runs): Inductor imports torch.utils.cpp_extension, which warns
so on a machine with a CUDA toolkit but no GPU, about CUDA extensions a CPU package does not use.

While it runs, an export holds the lock of its output file (:func:`output_lock`: ``<folder>/.<name>.lock/``, taken
with :func:`fastmtl.files.exclusive_folder` like the folders of train, eval and predict): a second export to the
same file is refused with a message naming the holder. The lock is per file, not on the whole folder, so exports
to other files of that folder, or a training run writing its checkpoints there, are not held up.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

import fastmtl
from fastmtl.checkpoint.store import load_model, model_config, read_checkpoint_info, stored_class_names
from fastmtl.data.images import ImagePaths
from fastmtl.data.inputs import collect_inputs, sample_batches
from fastmtl.data.transforms import _stats  # the exact float32 statistics normalize_image uses
from fastmtl.files import exclusive_folder, reporting_full_disk
from fastmtl.inference import onnxrt
from fastmtl.inference.agreement import TOLERANCE, agreement, cat_outputs, within_tolerance
from fastmtl.inference.traced import batch_dim, deployable, flat, output_names, write_onnx
from fastmtl.options import MAX_EXPORT_BATCH, check_export, check_input_side, check_range

__all__ = ["ExportCheckError", "export", "export_metadata", "normalization_stats", "output_lock"]

CHECK_TOL = 1e-4  # fp32 row of the tolerance table: Inductor reorders the convolutions' sums


class ExportCheckError(ValueError):
    """The exported program's outputs differ from the eager model's beyond tolerance."""


def normalization_stats(mode: str, channels: int) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) in 0..255 units, such that ``normalize_image(u8, mode) == (u8 - mean) / std``.

    The values are the float32 numbers ``normalize_image`` uses, so a runner that parses them into floats and
    computes ``(float(u8) - mean) / std`` in float32 reproduces its input bit for bit.
    """
    mean, std = _stats(mode, channels)  # float32
    return mean.tolist(), std.tolist()


def export_metadata(model: nn.Module, meta: dict[str, Any], img_size: int) -> dict[str, str]:
    """String metadata stored in the package (see the module docstring)."""
    config = model_config(model)
    class_names, seg_names = stored_class_names(config, meta)
    mean, std = normalization_stats(meta.get("normalize", "imagenet"), config.in_chans)
    return {
        "model": config.name,
        "fastmtl_version": fastmtl.__version__,
        "img_size": str(img_size),
        "in_chans": str(config.in_chans),
        "seg_classes": str(config.seg_classes),
        "cls_classes": str(config.cls_classes),
        "mean": ",".join(repr(v) for v in mean),
        "std": ",".join(repr(v) for v in std),
        "class_names": ",".join(class_names),
        "seg_class_names": ",".join(seg_names),
    }


def _check(run, model: nn.Module, example: torch.Tensor, names: list[str], batches: list[int]) -> None:
    """Compares ``run(x)`` (flat list of outputs) with the eager model for each batch size."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    for b in batches:
        x = torch.randn(b, *example.shape[1:], generator=gen).to(example.device)
        with torch.inference_mode():
            ref = flat(model(x))
        got = run(x)
        if len(got) != len(ref):
            raise ExportCheckError(f"exported program returned {len(got)} outputs, expected {len(ref)} ({names})")
        for name, g, r in zip(names, got, ref):
            g = torch.as_tensor(g).to(r.device, torch.float32)
            if g.shape != r.shape or not torch.allclose(g, r.float(), rtol=CHECK_TOL, atol=CHECK_TOL):
                diff = (g - r).abs().max().item() if g.shape == r.shape else float("nan")
                raise ExportCheckError(
                    f"exported {name} differs from eager at batch {b}: shape {tuple(g.shape)} vs {tuple(r.shape)}, "
                    f"max abs diff {diff:.3g} (tolerance {CHECK_TOL})"
                )


def output_lock(out_path: str | os.PathLike) -> AbstractContextManager[None]:
    """The lock an export of ``out_path`` holds (see the module docstring); raises FolderBusyError, naming the
    holder, when another job holds it."""
    out = Path(out_path)
    return exclusive_folder(out.parent / f".{out.name}.lock", "export")


def _export_aoti(program, out: Path, metadata: dict[str, str]) -> Path:
    from torch._inductor import aoti_compile_and_package

    # Built beside ``out`` and moved into place: a full disk or a kill leaves no partial .pt2 (the full disk as one
    # line naming the folder).
    with reporting_full_disk(out, f"the exported model {out.name}"), \
            tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work:  # fmt: skip
        path = aoti_compile_and_package(
            program, package_path=str(Path(work) / out.name), inductor_configs={"aot_inductor.metadata": metadata}
        )
        os.replace(path, out)
    return out


def _load_aoti(out: Path):
    from torch._inductor import aoti_load_package

    package = aoti_load_package(str(out))
    return lambda x: flat(package(x))


def _load_onnx(out: Path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: [torch.from_numpy(a) for a in session.run(None, {name: x.cpu().numpy()})]


def export(
    checkpoint: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    format: str = "aoti",
    img_size: int | None = None,
    batch_size: int = 1,
    dynamic_batch: bool = True,
    check: bool = True,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    calibrate: Any = None,
) -> Path:
    """Exports a fastmtl checkpoint to an AOTInductor package or an ONNX file.

    Args:
        checkpoint: ``<stem>.safetensors`` written by fastmtl.
        out_path: the file to write (``.pt2`` for AOTInductor, ``.onnx`` for ONNX).
        format: ``"aoti"`` or ``"onnx"``.
        img_size: input side (default the checkpoint's ``img_size``).
        batch_size: the example batch; the only batch size accepted when ``dynamic_batch`` is False.
        dynamic_batch: accept any batch size from 1 to 1024.
        check: run the exported program next to the eager model (the batch size, and one more with a dynamic
            batch) and raise :class:`ExportCheckError` when they differ. For ONNX the check needs onnxruntime
            and is skipped, with a message, when it is not installed.
        device: where to compile and check (an AOTInductor package runs on the device it was compiled for).
        precision: ``fp32``, or ``int8`` for ONNX: ONNX Runtime's static quantization (:mod:`fastmtl.inference.onnxrt`;
            7-bit weights, accurate on CPUs with and without VNNI), calibrated on up to 32 images of
            ``calibrate``; the check then compares it with the eager model on those images against
            :data:`fastmtl.inference.agreement.TOLERANCE` and prints the agreement. Packages are fp32.
        calibrate: int8's calibration images (anything :func:`~fastmtl.data.inputs.collect_inputs` takes).

    Returns:
        The written path.

    Raises:
        ValueError: an unknown format or precision, a bad size, int8 without ``calibrate`` or not as ONNX.
        IsADirectoryError: ``out_path`` is a folder.
        FolderBusyError: another export of ``out_path`` is running (:func:`output_lock`).
        ModuleNotFoundError: ONNX export without onnx/onnxscript (the message says what to install).
        ExportCheckError: the parity check failed.
    """
    check_export(format, precision, calibrate)
    check_range(batch_size, "batch_size", 1, MAX_EXPORT_BATCH)
    if img_size is not None:  # before any work: the model's rule, from the checkpoint's header
        stored, _ = read_checkpoint_info(checkpoint)
        check_input_side(img_size, stored.name, stored.img_size, str(checkpoint))
    if precision == "int8" and (reason := onnxrt.missing()):
        raise ModuleNotFoundError(reason)
    out = Path(out_path)
    if out.is_dir():
        raise IsADirectoryError(f"export output {out} is a folder; expected the file to write (.pt2 or .onnx)")
    with output_lock(out), _quiet_cpu_cuda_home(torch.device(device)):
        return _export(checkpoint, out, format, img_size, batch_size, dynamic_batch, check, device, calibrate)


_NO_CUDA_RUNTIME = "No CUDA runtime is found"  # torch.utils.cpp_extension's warning when CUDA_HOME exists


class _DropNoCudaRuntime(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NO_CUDA_RUNTIME)


@contextmanager
def _quiet_cpu_cuda_home(device: torch.device) -> Iterator[None]:
    """Drops torch.utils.cpp_extension's "No CUDA runtime is found, using CUDA_HOME=..." warning, which an export
    for the CPU triggers (Inductor imports that module) on a machine with a CUDA toolkit but no GPU: it concerns CUDA
    extensions, not a CPU package. Only that message of that logger, and only while exporting for the CPU."""
    if device.type != "cpu":
        yield
        return
    logger, drop = logging.getLogger("torch.utils.cpp_extension"), _DropNoCudaRuntime()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


@contextmanager
def _step(doing: str, done: str) -> Iterator[None]:
    """Prints what the export is doing now and, once done, how long it took."""
    print(f"fastmtl export: {doing} ...", flush=True)
    start = time.perf_counter()
    yield
    print(f"fastmtl export: {done} in {time.perf_counter() - start:.1f} s", flush=True)


def _export(checkpoint, out: Path, format: str, img_size, batch_size: int, dynamic_batch: bool, check: bool,
            device, calibrate) -> Path:  # fmt: skip
    with _step(f"loading {checkpoint}", "loaded"):
        model, meta = load_model(checkpoint, device=device, kernels="reference")
    config = model_config(model)
    size = img_size or config.img_size
    example = torch.zeros(max(batch_size, 2) if dynamic_batch else batch_size, config.in_chans, size, size)
    example = example.to(device)
    names = output_names(model, example)
    folded = deployable(model)
    metadata = {**export_metadata(model, meta, size), "outputs": ",".join(names)}
    dynamic = batch_dim(dynamic_batch)
    shape = f"{config.name} at {size} px, batch {'1..' + str(MAX_EXPORT_BATCH) if dynamic_batch else batch_size}"
    if format == "aoti":
        with _step(f"tracing {shape} with torch.export", "traced"):
            program = torch.export.export(folded, (example,), dynamic_shapes=dynamic)
        where = "minutes on a CPU" if example.device.type == "cpu" else "a minute or more"
        with _step(f"compiling it for {example.device.type} with AOTInductor ({where})", f"compiled {out}"):
            _export_aoti(program, out, metadata)
        runner = _load_aoti(out) if check else None
    elif calibrate is not None:
        calibration = _calibration(calibrate, size, meta.get("normalize", "imagenet"), config.in_chans)
        with tempfile.TemporaryDirectory(prefix="fastmtl-export-") as work:
            with _step(f"exporting {shape} to ONNX", "exported"):
                write_onnx(folded, example, Path(work) / "fp32.onnx", dynamic, names, metadata)
            with _step(f"quantizing it to int8 on {sum(len(b) for b in calibration)} image(s)", f"wrote {out}"):
                onnxrt.quantize(Path(work) / "fp32.onnx", out, [b.to("cpu") for b in calibration])
        if check:
            _check_int8(out, model, calibration)
        return out
    else:
        with _step(f"exporting {shape} to ONNX", f"wrote {out}"):
            write_onnx(folded, example, out, dynamic, names, metadata)
        runner = None
        if check and importlib.util.find_spec("onnxruntime") is None:
            print(f"fastmtl export: onnxruntime is not installed, {out} was not checked (pip install onnxruntime)")
        elif check:
            runner = _load_onnx(out)
    if runner is not None:
        batches = [batch_size] + ([batch_size + 1] if dynamic_batch and batch_size < MAX_EXPORT_BATCH else [])
        with _step(f"checking it against the eager model at batch {' and '.join(map(str, batches))}", "checked"):
            _check(runner, model, example, names, batches)
    return out


def _calibration(calibrate: Any, size: int, normalize: str, in_chans: int) -> list[torch.Tensor]:
    dataset = ImagePaths(collect_inputs(calibrate), (size, size), normalize, in_chans)
    batches = sample_batches(dataset, 8, 4)
    if not batches:
        raise ValueError(f"none of the {len(dataset)} calibration image(s) of {calibrate!r} could be read")
    return batches


def _check_int8(out: Path, model: nn.Module, calibration: list[torch.Tensor]) -> None:
    """The int8 file against the eager model on the calibration images, within the ``auto`` tolerance."""
    session = onnxrt.OnnxRuntimeModel(out)
    with torch.inference_mode():
        pooled = agreement(
            cat_outputs([model(b) for b in calibration]), cat_outputs([session(b.cpu()) for b in calibration])
        )
    text = ", ".join(f"{k} {v:.4g}" for k, v in pooled.items())
    if not within_tolerance(pooled):
        raise ExportCheckError(f"int8 {out} strays from the eager model on the calibration images ({text}); "
                               f"tolerance {TOLERANCE}")  # fmt: skip
    print(f"fastmtl export: int8 against the eager model on {sum(len(b) for b in calibration)} calibration "
          f"image(s): {text}")  # fmt: skip
