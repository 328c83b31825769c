"""``fastmtl.load_model``: a trained model back from its checkpoint in one line."""

from __future__ import annotations

import os

import torch
from torch import nn

from fastmtl.checkpoint.store import load_model as _load_checkpoint

__all__ = ["load_model"]


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu", kernels: str | None = None) -> nn.Module:
    """Rebuilds the model a fastmtl run saved (``best.safetensors``, ``last.safetensors``) and loads its weights.

    The architecture comes from the config stored in the file, so no options are needed; nothing is unpickled.
    The model is returned in eval mode on ``device``; what training stored with it (epoch, validation metrics,
    class names, the training config) is in ``model.checkpoint_meta``.

    Args:
        path: a ``.safetensors`` file written by ``fastmtl train`` (or ``engine.checkpoint.save_checkpoint``).
        device: where to put the model.
        kernels: override the stored kernel backend ("reference", "triton", "auto").

    Raises:
        CheckpointError (a ValueError): no such file, not a fastmtl checkpoint, or weights that do not fit the
            stored config; the message names the file.
    """
    model, meta = _load_checkpoint(path, device=device, kernels=kernels)
    model.checkpoint_meta = meta
    return model
