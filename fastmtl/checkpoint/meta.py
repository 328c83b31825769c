"""Validation of what a checkpoint file holds before it is used: metadata by schema, weights by finiteness.

Checkpoint metadata is JSON text inside the safetensors header, so a crafted or damaged file can hold anything:
:func:`checked_meta` bounds its size and nesting depth and checks the type of every key fastmtl reads, so a bad
file ends in one ``ValueError`` naming the field instead of a ``RecursionError`` or ``AttributeError`` later.
"""

from __future__ import annotations

import contextvars
import json
import math
import sys
from collections.abc import Mapping
from typing import Any

import torch

from fastmtl.options import MAX_IMG_SIZE

__all__ = ["MAX_DEPTH", "MAX_META_CHARS", "check_finite", "checked_config", "checked_meta"]

MAX_META_CHARS = 4_000_000
MAX_DEPTH = 32
_MAX_NAMES = 10_000
_MAX_NAME_CHARS = 256

_INT_KEYS = ("epoch", "global_step", "seg_classes", "img_size")
_STR_KEYS = ("normalize", "data_kind", "val_source")
_DICT_KEYS = ("metrics", "train_config")
_NAME_KEYS = ("class_names", "seg_class_names")


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def _names(value: Any, key: str) -> None:
    if not isinstance(value, list) or len(value) > _MAX_NAMES:
        raise ValueError(f"{key} must be a list of at most {_MAX_NAMES} names")
    for name in value:
        if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME_CHARS:
            raise ValueError(f"{key} must hold names of 1 to {_MAX_NAME_CHARS} characters, not {str(name)[:40]!r}")


def checked_meta(text: Any, field: str) -> dict[str, Any]:
    """The JSON object in the metadata entry ``field``, checked by schema.

    Raises:
        ValueError: not a string, too large, not JSON, not an object, nested deeper than :data:`MAX_DEPTH`, or a
            known key of the wrong type.
    """
    if not isinstance(text, str):
        raise ValueError(f"{field} is not text")
    if len(text) > MAX_META_CHARS:
        raise ValueError(f"{field} holds {len(text):,} characters (at most {MAX_META_CHARS:,})")
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"{field} is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except ValueError as e:
        raise ValueError(f"{field} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{field} must be a JSON object, not {type(value).__name__}")
    if _depth(value) > MAX_DEPTH:
        raise ValueError(f"{field} is nested too deeply (at most {MAX_DEPTH} levels)")
    for key in _INT_KEYS:
        item = value.get(key)
        if item is not None and (isinstance(item, bool) or not isinstance(item, int) or item < 0):
            raise ValueError(f"{field}.{key} must be a non-negative integer, not {item!r:.40}")
    for key in _STR_KEYS:
        if value.get(key) is not None and not isinstance(value[key], str):
            raise ValueError(f"{field}.{key} must be text")
    for key in _DICT_KEYS:
        if value.get(key) is not None and not isinstance(value[key], dict):
            raise ValueError(f"{field}.{key} must be an object")
    for key in _NAME_KEYS:
        if value.get(key) is not None:
            _names(value[key], f"{field}.{key}")
    weights = value.get("class_weights")
    if weights is not None and not (
        isinstance(weights, list) and all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights)
    ):
        raise ValueError(f"{field}.class_weights must be a list of finite numbers")
    return value


# Sane bounds of a stored config, checked before anything is built from it: --img-size's own limit, and channel and
# class counts far above any real dataset's (a crafted 100000 input channels alone asks for gigabytes).
_BOUNDS = {"img_size": MAX_IMG_SIZE, "in_chans": 64, "seg_classes": 1024, "cls_classes": 1024}


def checked_config(text: Any) -> dict[str, Any]:
    """The model config entry (``fastmtl_config``) checked by schema before :meth:`ModelConfig.from_dict` sees it."""
    value = checked_meta(text, "fastmtl_config")
    if not isinstance(value.get("name"), str):
        raise ValueError("fastmtl_config.name must be a model name")
    for key, top in _BOUNDS.items():
        item = value.get(key)
        if item is not None and (isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= top):
            raise ValueError(f"fastmtl_config.{key} must be an integer from 0 to {top}, not {item!r:.40}")
    dilations = value.get("dilations")
    if dilations is not None and not (
        isinstance(dilations, list)
        and len(dilations) <= 16
        and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 1024 for d in dilations)
    ):
        raise ValueError("fastmtl_config.dilations must be a list of at most 16 integers from 1 to 1024")
    rate = value.get("drop_path_rate")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1):
        raise ValueError("fastmtl_config.drop_path_rate must be a number from 0 to 1")
    for key in ("fusion", "dfe", "cls_head", "eca_layout", "kernels"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise ValueError(f"fastmtl_config.{key} must be text")
    if value.get("extra") is not None and not isinstance(value["extra"], dict):
        raise ValueError("fastmtl_config.extra must be an object")
    return value


def check_finite(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or inf (None: all finite)."""
    for name, tensor in state.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            return name
    return None


# ------------------------------------------------------------------------------- what the training data was
SYNTHETIC_WARNING = "this model was trained on synthetic lesions; its outputs on real images mean nothing"
# Set while the demo evaluates and predicts: its banner has already said it, once.
IN_DEMO = contextvars.ContextVar("fastmtl_in_demo", default=False)


def trained_on_synthetic(meta: Mapping[str, Any]) -> bool:
    """Whether a checkpoint's metadata (``load_model``'s second result) says it was trained on synthetic data."""
    kind = meta.get("data_kind")
    if kind is None:
        data = (meta.get("train_config") or {}).get("data")  # the data section, or the kind of a flat config
        kind = data.get("kind") if isinstance(data, dict) else data
    return kind == "synthetic"


def warn_if_synthetic(meta: Mapping[str, Any], checkpoint: Any = None) -> bool:
    """Prints ``fastmtl: warning: ...`` to stderr when the checkpoint was trained on synthetic lesions (not
    inside ``fastmtl demo``, whose banner says so); returns whether it was."""
    if not trained_on_synthetic(meta):
        return False
    if IN_DEMO.get():
        return True
    where = f" ({checkpoint})" if checkpoint is not None else ""
    print(f"fastmtl: warning: {SYNTHETIC_WARNING}{where}", file=sys.stderr)
    return True
