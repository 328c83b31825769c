"""The command line's checks that run before PyTorch is imported, so that a mistake is answered at once: paths,
numbers, devices, dataset kinds (named, or shown by a data folder's layout), the optional packages an export
needs, and an ``--img-size`` against the rule of the checkpoint it is for (read from the checkpoint's safetensors
header: no tensors, no PyTorch).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from pathlib import Path
from typing import Any

from fastmtl.files import existing  # no PyTorch there
from fastmtl.options import (
    ENCODER_STRIDE,
    MAX_BATCH_SIZE,
    MAX_EXPORT_BATCH,
    check_device_name,
    check_img_size,
    check_input_side,
    check_kind,
    check_range,
    detect_kind,
    require,
)

__all__ = ["check_args", "stored_model_config"]

_HEADER_LIMIT = 100_000_000  # safetensors' own bound on a header


def _existing(path: str | None, what: str, kind: str = "file") -> None:
    if path is not None:
        existing(path, what, kind)


def _output(path: str, kind: str) -> None:
    """``--out`` can be written as a ``kind`` ("file" or "folder"): not a thing of the other kind, under folders."""
    p = Path(path).expanduser()
    if p.exists() and p.is_dir() != (kind == "folder"):
        raise ValueError(f"--out {path} is a {'folder' if p.is_dir() else 'file'}; expected a {kind}")
    above = next((a for a in p.parents if a.exists()), None)
    if above is not None and not above.is_dir():
        raise NotADirectoryError(f"--out {path} lies under {above}, which is a file, not a folder")


def _in_range(value: int | None, flag: str, low: int, high: int) -> None:
    if value is not None:
        check_range(value, flag, low, high)


def _check_device(device: str | None) -> None:
    """A device name; for ``cuda:N`` or ``mps``, whether PyTorch sees that device (only then is PyTorch asked)."""
    if device is not None:
        check_device_name(device)
    if device is not None and (device.startswith("cuda:") or device == "mps"):
        import torch

        mps = device == "mps"
        count = int(torch.backends.mps.is_available()) if mps else torch.cuda.device_count()
        if (0 if mps else int(device[5:])) >= count:
            kind = "MPS" if mps else "CUDA"
            raise ValueError(f"--device {device}: torch sees {count} {kind} device(s); use auto or cpu")


def stored_model_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The model config (``fastmtl_config``) a fastmtl safetensors file stores, read from its JSON header alone;
    None when the header cannot be read that way (loading the checkpoint then says what is wrong with it)."""
    try:
        with open(path, "rb") as file:
            size = int.from_bytes(file.read(8), "little")
            if not 2 <= size <= _HEADER_LIMIT:
                return None
            header = json.loads(file.read(size))
        config = json.loads(header["__metadata__"]["fastmtl_config"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    valid = isinstance(config, dict) and isinstance(config.get("name"), str) and type(config.get("img_size")) is int
    return config if valid and config["img_size"] >= ENCODER_STRIDE else None


def _check_img_size(args: argparse.Namespace) -> None:
    """``--img-size``: an image side (:func:`fastmtl.options.check_img_size`), and one the checkpoint's model takes
    (its config read from the checkpoint's header, before any model is built)."""
    img_size = getattr(args, "img_size", None)
    if img_size is None:
        return
    check_img_size(img_size, "--img-size")
    config = stored_model_config(args.checkpoint)
    if config is not None:
        check_input_side(img_size, config["name"], config["img_size"], args.checkpoint)


def _check_needs(args: argparse.Namespace) -> None:
    """The optional packages the command needs, and the dataset kind it names or its data folder's layout shows."""
    kind = getattr(args, "kind", None)
    if kind is not None:
        check_kind(kind)
    if args.command in ("eval", "check-data") and kind in (None, "auto") and args.data_root is not None:
        detect_kind(args.data_root)  # a folder of no known layout is answered now
    if args.command == "export" and args.format == "onnx":
        require("onnx", "onnxscript", *(("onnxruntime",) if args.precision == "int8" else ()),
                what=f"export --format onnx{' --precision int8' if args.precision == 'int8' else ''}")  # fmt: skip


def check_args(args: argparse.Namespace) -> None:
    """Paths, numbers, names and optional packages of ``args``, checked without importing PyTorch (but for a
    ``cuda:N`` or ``mps`` device, where PyTorch is asked whether it sees that device)."""
    for dest, value in vars(args).items():
        if value == "":
            raise ValueError(f"--{dest.replace('_', '-')} is empty; give a value")
    cores = os.cpu_count() or 1
    _in_range(args.threads, "--threads", 1, 4 * cores)  # far more threads than cores only thrashes (or crashes)
    _existing(getattr(args, "checkpoint", None), "checkpoint")
    _existing(getattr(args, "data_root", None), "data folder", kind="dir")
    high = MAX_EXPORT_BATCH if args.command == "export" else MAX_BATCH_SIZE
    _in_range(getattr(args, "batch_size", None), "--batch-size", 1, high)
    _in_range(getattr(args, "workers", None), "--workers", 0, 4 * cores)
    if getattr(args, "out", None) is not None:  # export and check-data write a file, the others a folder
        _output(args.out, "file" if args.command in ("export", "check-data") else "folder")
    if args.command == "export":
        parent = Path(args.out).expanduser().parent
        if not parent.is_dir():
            raise FileNotFoundError(f"the folder of --out {args.out} does not exist; create {parent} first")
    _check_img_size(args)
    threshold = getattr(args, "threshold", None)
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ValueError(f"--threshold must lie strictly between 0 and 1, got {threshold}")
    for what, dest in (("input", "input"), ("--calibrate input", "calibrate")):
        for item in getattr(args, dest, None) or ():
            text = os.path.expanduser(item)
            if not os.path.exists(text) and not glob.glob(text, recursive=True):
                raise FileNotFoundError(f"{what} {item} does not exist (nor does it match any file as a pattern)")
    _check_device(getattr(args, "device", None))
    _check_needs(args)
