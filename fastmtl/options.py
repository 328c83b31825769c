"""Vocabularies and rules that need no PyTorch: the command line checks them before importing it, and the library
uses the same ones, so each rule has one home.

- :data:`DATA_KINDS`: the dataset kinds (:mod:`fastmtl.data.registry` maps each to its class) and
  :func:`detect_kind`, the kind of a folder from its layout;
- :func:`require`: an optional package an operation needs, named with the extra that installs it;
- the input sizes a model takes: :func:`input_step` (every model's sides are multiples of the encoder's stride,
  16; a ResFormer's, built with a Swin window of ``img_size // 16``, multiples of ``img_size``) and
  :func:`check_input_side`, which says which sizes a checkpoint takes;
- the inference vocabularies (:data:`PRECISIONS`, :data:`RUNTIMES`, the export formats and precisions) and their
  checks, :func:`check_inference` and :func:`check_export`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = [
    "DATA_KINDS",
    "ENCODER_STRIDE",
    "EXPORT_FORMATS",
    "EXPORT_PRECISIONS",
    "FILE_RUNTIMES",
    "MAX_IMG_SIZE",
    "PRECISIONS",
    "RUNTIMES",
    "WINDOWED_MODELS",
    "check_export",
    "check_inference",
    "check_input_side",
    "check_kind",
    "detect_kind",
    "input_step",
    "require",
    "window_step",
]

DATA_KINDS = ("isic2017", "retouch", "oct", "folder", "synthetic")
ENCODER_STRIDE = 16  # the encoders' total downsampling: every input side is a multiple of it
MAX_IMG_SIZE = 8192
# The registered models with Swin windows; the baselines and models registered elsewhere have none here (a model
# of your own checks its input itself when it runs).
WINDOWED_MODELS = ("resformer_mtl", "resformer_mtl_serial", "resformer_mtl_nodfe")


def check_kind(kind: str) -> str:
    """``kind`` if it is a dataset kind or ``"auto"``; else a ValueError listing the kinds."""
    if kind != "auto" and kind not in DATA_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; valid kinds: {', '.join(DATA_KINDS)} (or 'auto')")
    return kind


def _has(root: Path, pattern: str) -> bool:
    return next(iter(root.glob(pattern)), None) is not None


def detect_kind(root: str | Path | None) -> str:
    """Guesses the dataset kind from a folder layout.

    None gives "synthetic"; ``ISIC-2017_*_Data/`` -> "isic2017"; ``manifest.csv`` (or a CSV file) -> "oct";
    ``oct.mhd`` up to two levels down -> "retouch"; ``images/`` or ``<split>/images/`` -> "folder".

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: no known layout matches.
    """
    if root is None:
        return "synthetic"
    path = Path(root)
    if not path.exists():
        raise FileNotFoundError(f"dataset root {path} not found")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "oct"
        raise ValueError(f"{path} is a file; expected a dataset folder or an OCT manifest CSV")
    if _has(path, "ISIC-2017_*_Data"):
        return "isic2017"
    if (path / "manifest.csv").is_file():
        return "oct"
    if _has(path, "oct.mhd") or _has(path, "*/oct.mhd") or _has(path, "*/*/oct.mhd"):
        return "retouch"
    if (path / "images").is_dir() or _has(path, "*/images"):
        return "folder"
    raise ValueError(
        f"cannot tell the dataset kind of {path}: expected ISIC-2017_<Split>_Data/ (isic2017), manifest.csv (oct), "
        "<case>/oct.mhd (retouch) or images/ [+ masks/, labels.csv] (folder)"
    )


def require(*modules: str, what: str, extra: str = "export") -> None:
    """Raises ModuleNotFoundError naming the ``modules`` that are not installed, what needs them and the extra that
    installs them (found without importing them)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ModuleNotFoundError(
            f"{what} needs {', '.join(missing)}: pip install {' '.join(missing)} (or pip install 'fastmtl[{extra}]')"
        )


def window_step(window: int) -> int:
    """A Swin encoder built with window side ``window`` takes input sides that are multiples of ``16 * window``:
    its last stage's token map (H/16 x W/16) must tile into whole windows, and so must the earlier ones."""
    return ENCODER_STRIDE * window


def input_step(model: str, img_size: int) -> int:
    """The input sides the registered ``model`` built for ``img_size`` takes are the multiples of this."""
    return window_step(img_size // ENCODER_STRIDE) if model in WINDOWED_MODELS else ENCODER_STRIDE


def check_input_side(side: int, model: str, img_size: int, source: str) -> None:
    """Raises ValueError when ``side`` (an ``--img-size``) is not one that ``model`` built for ``img_size`` (the
    checkpoint ``source``) takes; the message lists the sizes it does take."""
    step = input_step(model, img_size)
    if 0 < side <= MAX_IMG_SIZE and side % step == 0:
        return
    sizes = ", ".join(str(step * k) for k in range(1, 5) if step * k <= MAX_IMG_SIZE)
    why = f" (its Swin windows are {img_size // ENCODER_STRIDE} tokens wide)" if model in WINDOWED_MODELS else ""
    raise ValueError(
        f"--img-size {side} does not fit checkpoint {source}: its {model} was built for {img_size} px{why} and takes "
        f"sides that are multiples of {step} up to {MAX_IMG_SIZE}: {sizes}, ..."
    )


# ------------------------------------------------------------------------------------ inference: precision, runtime
# What ``fastmtl predict`` and ``fastmtl export`` take: the command line offers these as its choices and
# :class:`fastmtl.inference.path.Request` checks a request against them once (:func:`check_inference`); nothing
# downstream checks them again.

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
FILE_RUNTIMES = ("onnxruntime", "openvino")  # optimize their own graph (no torch.compile), cached on disk
EXPORT_FORMATS = ("aoti", "onnx")
EXPORT_PRECISIONS = ("fp32", "int8")


def _one_of(what: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")


def check_inference(precision: str, runtime: str, compile: bool, optimize: bool) -> None:
    """Raises ValueError, naming the value and the choices, for a request ``fastmtl predict`` cannot take: an
    unknown precision or runtime, ``compile`` on a runtime that optimizes its own graph, or a precision / runtime
    other than fp32 on torch for the model as saved (``optimize=False``)."""
    _one_of("precision", precision, PRECISIONS)
    _one_of("runtime", runtime, RUNTIMES)
    if compile and runtime in FILE_RUNTIMES:
        raise ValueError(f"compile applies to the torch runtime; {runtime} optimizes its own graph")
    if not optimize and (precision not in ("auto", "fp32") or runtime in FILE_RUNTIMES):
        raise ValueError(f"precision {precision!r} on runtime {runtime!r} needs the optimized model; drop "
                         "--no-optimize")  # fmt: skip


def check_export(format: str, precision: str, calibrate: object) -> None:
    """Raises ValueError for an export ``fastmtl export`` cannot write: an unknown format or precision, or int8 not
    as an ONNX file calibrated on the user's images (``calibrate`` None)."""
    _one_of("export format", format, EXPORT_FORMATS)
    _one_of("export precision", precision, EXPORT_PRECISIONS)
    if precision == "int8" and (format != "onnx" or calibrate is None):
        raise ValueError("an int8 export is an ONNX file calibrated on your images: use --format onnx and "
                         "--calibrate PATH (AOTInductor packages are fp32)")  # fmt: skip
