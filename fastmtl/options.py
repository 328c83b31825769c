"""Every vocabulary and range rule of fastmtl, with no PyTorch: the command line checks them before importing it,
and the configs, the models and the engine use the same ones, so each rule has one home.

- devices: :data:`DEVICES` (the names a config or ``--device`` choice takes) and :func:`check_device_name` (also
  ``cuda:N`` and ``mps``);
- mixed precision: :data:`AMP_CHOICES` (:mod:`fastmtl.runtime` maps them to dtypes); ``torch.compile`` modes:
  :data:`COMPILE_MODES`;
- kernel backends: :data:`KERNEL_BACKENDS` and :func:`check_backend`;
- image sizes: :func:`check_img_size`, the one rule for an image side (a model's ``img_size``, a training config's,
  ``--img-size``, ``predict(img_size=...)``), and the input sizes a built model takes: :func:`input_step` (every
  model's sides are multiples of the encoder's stride, 16; a ResFormer's, built with a Swin window of
  ``img_size // 16``, multiples of ``img_size``) and :func:`check_input_side`, which says which sizes a checkpoint
  takes;
- batch sizes and other counts: :data:`MAX_BATCH_SIZE`, :data:`MAX_EXPORT_BATCH` and :func:`check_range`;
- export: :data:`EXPORT_FORMATS` and :data:`EXPORT_PRECISIONS`;
- datasets: :data:`DATA_KINDS` (:mod:`fastmtl.data.registry` maps each to its class) and :func:`detect_kind`, the
  kind of a folder from its layout;
- :func:`require`: an optional package an operation needs, named with the extra that installs it;
- inference: :data:`PRECISIONS`, :data:`RUNTIMES` and their check, :func:`check_inference`; the export check,
  :func:`check_export`.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

__all__ = [
    "AMP_CHOICES",
    "COMPILE_MODES",
    "DATA_KINDS",
    "DEVICES",
    "ENCODER_STRIDE",
    "EXPORT_FORMATS",
    "EXPORT_PRECISIONS",
    "FILE_RUNTIMES",
    "KERNEL_BACKENDS",
    "MAX_BATCH_SIZE",
    "MAX_EXPORT_BATCH",
    "MAX_IMG_SIZE",
    "MIN_MODEL_IMG_SIZE",
    "PRECISIONS",
    "RUNTIMES",
    "WINDOWED_MODELS",
    "check_backend",
    "check_device_name",
    "check_export",
    "check_img_size",
    "check_inference",
    "check_input_side",
    "check_kind",
    "check_range",
    "detect_kind",
    "input_step",
    "require",
    "window_step",
]

DEVICES = ("auto", "cpu", "cuda")  # a config's device; --device also takes cuda:N and mps (check_device_name)
_DEVICE_NAME = re.compile(r"^(auto|cpu|cuda(:\d{1,4})?|mps)$")
AMP_CHOICES = ("auto", "bf16", "fp16", "off")  # fastmtl.runtime: bf16 on CUDA / none elsewhere, ..., fp32
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
KERNEL_BACKENDS = ("reference", "triton", "auto")
EXPORT_FORMATS = ("aoti", "onnx")
EXPORT_PRECISIONS = ("fp32", "int8")
MAX_BATCH_SIZE = 65536
MAX_EXPORT_BATCH = 1024  # an exported program's dynamic batch spans 1..1024
ENCODER_STRIDE = 16  # the encoders' total downsampling: every input side is a multiple of it
MAX_IMG_SIZE = 8192
MIN_MODEL_IMG_SIZE = 2 * ENCODER_STRIDE  # a model is built for Swin windows of at least 2 x 2 tokens
# The registered models with Swin windows; the baselines and models registered elsewhere have none here (a model
# of your own checks its input itself when it runs).
WINDOWED_MODELS = ("resformer_mtl", "resformer_mtl_serial", "resformer_mtl_nodfe")
DATA_KINDS = ("isic2017", "retouch", "oct", "folder", "synthetic")


def check_device_name(name: str, what: str = "--device") -> str:
    """``name`` if it names a device (auto, cpu, cuda, cuda:N or mps), else a ValueError; whether that device is
    present is for :func:`fastmtl.runtime.resolve_device` to say."""
    if not _DEVICE_NAME.match(name):
        raise ValueError(f"{what} {name!r} is not a device; expected auto, cpu, cuda, cuda:N or mps")
    return name


def _one_of(what: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")


def check_backend(name: str) -> str:
    """``name`` if it is a kernel backend, else a ValueError listing them."""
    _one_of("kernel backend", name, KERNEL_BACKENDS)
    return name


def check_range(value: int, what: str, low: int, high: int) -> int:
    """``value`` if ``low <= value <= high``, else a ValueError naming ``what`` (e.g. ``--batch-size``)."""
    if type(value) is bool or not low <= value <= high:
        raise ValueError(f"{what} must be between {low} and {high}, got {value!r}")
    return value


def _is_side(side: int, step: int, minimum: int = ENCODER_STRIDE) -> bool:
    return type(side) is int and minimum <= side <= MAX_IMG_SIZE and side % step == 0


def check_img_size(side: int, what: str = "img_size", minimum: int = ENCODER_STRIDE) -> int:
    """``side`` if it is an image side: a multiple of 16 (the encoders' stride) from ``minimum`` up to 8192; else
    a ValueError naming ``what``. A model's own ``img_size`` takes ``minimum=MIN_MODEL_IMG_SIZE`` (32: Swin
    windows of at least 2 x 2 tokens); which sides a built model then takes is :func:`check_input_side`'s rule."""
    if not _is_side(side, ENCODER_STRIDE, minimum):
        raise ValueError(f"{what} must be a multiple of {ENCODER_STRIDE} from {minimum} up to {MAX_IMG_SIZE}, "
                         f"got {side!r}")  # fmt: skip
    return side


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
    if _is_side(side, step):
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
