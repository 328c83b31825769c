"""Where and in what precision a model runs: device resolution and the one mixed-precision vocabulary.

Training (``TrainConfig.amp``), evaluation, prediction and inference all name mixed precision the same way:

=========  ===========================================
``amp``    autocast dtype
=========  ===========================================
"auto"     bf16 on CUDA, none elsewhere (the default)
"bf16"     bfloat16 on any device (also ``True``)
"fp16"     float16 (training adds a grad scaler)
"off"      none: fp32 (also ``False``)
=========  ===========================================

A ``torch.dtype`` is accepted as well (``torch.float32`` means "off"). ``None`` is not a setting: it meant "auto"
in one place and "off" in another, so it raises.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import torch

__all__ = ["AMP_CHOICES", "Amp", "amp_dtype", "autocast", "batch_to_device", "resolve_device"]

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
Amp = Literal["auto", "bf16", "fp16", "off"] | bool | torch.dtype

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None, True: torch.bfloat16, False: None}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; any other name or device as ``torch.device``.

    Raises:
        ValueError: CUDA was asked for and torch sees no CUDA device.
    """
    if isinstance(name, torch.device):
        device = name
    elif name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(name)!r} was requested but torch sees no CUDA device; use --device cpu")
    return device


def amp_dtype(amp: Amp, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for an ``amp`` setting on ``device`` (None: no autocast); see the module table.

    Raises:
        ValueError: ``amp`` is not in the vocabulary.
    """
    if isinstance(amp, torch.dtype):
        return None if amp == torch.float32 else amp
    if amp == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else None
    if isinstance(amp, (str, bool)) and amp in _DTYPES:
        return _DTYPES[amp]
    raise ValueError(f"amp={amp!r} is not valid; expected one of {', '.join(AMP_CHOICES)}, True, False or a dtype")


def autocast(device: torch.device | str, amp: Amp = "auto") -> AbstractContextManager:
    """``torch.autocast`` for ``amp`` on ``device``'s type, or a no-op context when it resolves to no autocast."""
    device = torch.device(device)
    dtype = amp_dtype(amp, device)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def batch_to_device(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    """A sample-dict batch's tensors on ``device`` (non-blocking from pinned memory; other values dropped), the
    image channels-last when asked."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if channels_last:
        out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
    return out
