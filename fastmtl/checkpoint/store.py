"""Checkpoints: safetensors weights with the model config inside, plus a JSON sidecar for training state.

Layout for a stem ``run/last``:
    run/last.safetensors        model weights; metadata ``fastmtl_config`` (JSON ModelConfig) and
                                ``fastmtl_meta`` (JSON: epoch, metrics, ...). Self-contained for eval/predict.
    run/last.train.safetensors  optimizer state tensors (only with ``optimizer=``), for ``--resume``.
    run/last.json               optimizer/scheduler hyper-parameters, epoch, step, metrics, RNG states, config.

With an optimizer the three files form one *set*, either wholly old or wholly new for ``--resume``
(:mod:`fastmtl.checkpoint.sets`): each file carries the set's token, the sidecar (replaced last) the content
hashes, and the previous set stays as ``run/last.prev.*`` until the new one is complete, so a run killed between
any two file operations resumes from a consistent set. Loading never unpickles; non-finite weights and malformed
metadata are refused with a :class:`CheckpointError` naming the tensor or field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from fastmtl.checkpoint.meta import check_finite, checked_config, checked_meta
from fastmtl.checkpoint.sets import TOKEN_KEY, CheckpointError, save_set, set_files, verify
from fastmtl.config import ModelConfig
from fastmtl.files import json_dumps, not_regular, replacing
from fastmtl.metrics import default_class_names, default_seg_class_names
from fastmtl.models.base import MTLModel
from fastmtl.registry import create_model_from_config


def _atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    kept = f"the earlier {path.name} is untouched" if path.is_file() else f"no {path.name} was written"
    with replacing(path, what=f"the checkpoint {path.name}", after=kept) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


def model_config(model: nn.Module) -> ModelConfig:
    """The :class:`ModelConfig` a registered model was built from (and runs with: ``set_backend`` keeps it)."""
    inner = _unwrap(model)
    if not isinstance(inner, MTLModel):
        raise TypeError(f"{type(model).__name__} is not a fastmtl model (fastmtl.models.base.MTLModel); build it "
                        "with fastmtl.create_model")  # fmt: skip
    return inner.config


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(model, "_orig_mod", model)  # torch.compile


def save_checkpoint(
    stem: str | os.PathLike,
    model: nn.Module,
    *,
    meta: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Saves ``<stem>.safetensors`` (+ ``.train.safetensors`` and ``.json`` with an optimizer) atomically.

    Args:
        stem: path without suffix.
        model: a registered fastmtl model (DDP / compiled wrappers are unwrapped).
        meta: JSON-serialisable facts stored in the weights file (epoch, metrics, ...).
        optimizer: when given, its state is saved for an exact resume.
        train_state: JSON-serialisable training state for the sidecar (step, scheduler, RNG, history ...).

    Returns:
        The path of the weights file.
    """
    stem = Path(stem)
    config = model_config(model)
    weights = set_files(stem)[0]
    state = _unwrap(model).state_dict()
    metadata = {
        "fastmtl_config": json.dumps(config.to_dict()),
        "fastmtl_meta": json_dumps(meta or {}, strict=False),
    }
    if optimizer is None:
        _atomic_save_tensors(state, weights, metadata)
        return weights
    opt_tensors, opt_json = _flatten_optimizer(optimizer.state_dict())
    sidecar = {"config": config.to_dict(), "meta": meta or {}, "optimizer": opt_json, **(train_state or {})}

    def write(tensors: dict[str, torch.Tensor], extra: dict[str, str]) -> Any:
        cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        return lambda path, token: save_file(cpu, path, metadata={**extra, TOKEN_KEY: token})

    def sidecar_bytes(record: dict) -> bytes:
        return (json_dumps({**sidecar, "set": record}, strict=False, indent=2) + "\n").encode()

    save_set(stem, write(state, metadata), write(opt_tensors, {}), sidecar_bytes)
    return weights


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, plain = {}, {"param_groups": state_dict["param_groups"], "state": {}}
    for pid, pstate in state_dict["state"].items():
        entry = {}
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value
                entry[key] = {"tensor": f"{pid}.{key}"}
            else:
                entry[key] = value
        plain["state"][str(pid)] = entry
    return tensors, plain


def _unflatten_optimizer(plain: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state = {}
    for pid, entry in plain["state"].items():
        state[int(pid)] = {
            k: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v for k, v in entry.items()
        }
    return {"state": state, "param_groups": plain["param_groups"]}


def read_checkpoint_info(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """(config, meta) stored in a weights file, without loading tensors."""
    path = Path(path)
    reason = not_regular(path)
    if reason is not None:
        found = "does not exist" if reason == "no such file" else f"is {reason}"
        raise CheckpointError(f"checkpoint {path} {found} (expected a .safetensors file written by fastmtl)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {e}") from e
    if "fastmtl_config" not in metadata:
        raise CheckpointError(f"checkpoint {path} has no fastmtl model config; was it written by fastmtl?")
    try:
        config = ModelConfig.from_dict(checked_config(metadata["fastmtl_config"]))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} has an invalid model config: {e}") from e
    try:
        meta = checked_meta(metadata.get("fastmtl_meta", "{}"), "fastmtl_meta")
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path} has invalid metadata: {e}") from e
    return config, meta


def stored_class_names(config: ModelConfig, meta: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(classification, foreground segmentation) class names a checkpoint's meta holds (training stores the
    dataset's); a checkpoint written without them gets the generic names of :mod:`fastmtl.metrics`."""
    names = meta.get("class_names") or default_class_names(config.cls_classes)
    seg_names = meta.get("seg_class_names") or default_seg_class_names(config.seg_classes)
    return tuple(names), tuple(seg_names)


def load_model(
    path: str | os.PathLike, *, device: str | torch.device = "cpu", kernels: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds the model stored in a fastmtl weights file and loads its weights (eval mode).

    Args:
        path: ``<stem>.safetensors``.
        device: where to put the model.
        kernels: override the stored kernel backend.

    Returns:
        (model, meta) where meta holds what the training run stored (epoch, metrics, ...).
    """
    config, meta = read_checkpoint_info(path)
    if kernels is not None:
        config = ModelConfig.from_dict({**config.to_dict(), "kernels": kernels})
    check_shapes(path, config)
    model = create_model_from_config(config)
    load_weights(model, path)
    return model.to(device).eval(), meta


def check_shapes(path: str | os.PathLike, config: ModelConfig) -> None:
    """Checks that the tensors stored in ``path`` (names and shapes, read from the header) are those of the model
    ``config`` describes, before that model is built: its skeleton is built on the ``meta`` device, which
    allocates nothing, so a crafted config that does not describe the weights costs no memory.

    Raises:
        CheckpointError: a tensor missing, extra or of another shape, named with the config's values.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {e}") from e
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in create_model_from_config(config).state_dict().items()}
    described = (f"its stored config ({config.name}, img_size={config.img_size}, in_chans={config.in_chans}, "
                 f"seg_classes={config.seg_classes}, cls_classes={config.cls_classes})")  # fmt: skip
    for name, shape in expected.items():
        if name not in stored:
            raise CheckpointError(f"checkpoint {path} does not hold tensor {name!r} that {described} needs")
        if stored[name] != shape:
            raise CheckpointError(
                f"checkpoint {path}: tensor {name!r} has shape {list(stored[name])} but {described} needs "
                f"{list(shape)}; the config does not describe these weights"
            )
    extra = sorted(set(stored) - set(expected))
    if extra:
        raise CheckpointError(f"checkpoint {path} holds tensor {extra[0]!r} that {described} does not have "
                              f"({len(extra)} such tensor(s))")  # fmt: skip


def load_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> None:
    """Loads a weights file into ``model``; a config or key mismatch raises :class:`CheckpointError`."""
    stored, _ = read_checkpoint_info(path)
    own = model_config(model)
    if stored.name != own.name:
        raise CheckpointError(f"checkpoint {path} holds model {stored.name!r}, not {own.name!r}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {e}") from e
    bad = check_finite(state)
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} holds non-finite values (NaN or inf) in {bad}; refusing to load it")
    try:
        _unwrap(model).load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit model {own.name!r}: {e}") from e


def load_training_state(
    stem: str | os.PathLike, optimizer: torch.optim.Optimizer, *, verified: bool = False
) -> dict[str, Any]:
    """Restores the optimizer saved with ``stem`` and returns the JSON sidecar (step, epoch, RNG, ...).

    The set's consistency (:func:`fastmtl.checkpoint.sets.verify`) is checked first unless ``verified``.
    """
    stem = Path(stem)
    _, tensor_path, sidecar_path = set_files(stem)
    if not sidecar_path.is_file() or not tensor_path.is_file():
        raise CheckpointError(f"no resumable training state at {stem} (expected {sidecar_path} and {tensor_path})")
    reason = None if verified else verify(stem)
    if reason is not None:
        raise CheckpointError(f"the checkpoint {stem} is inconsistent: {reason}")
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{sidecar_path} is not valid JSON: {e}") from e
    optimizer.load_state_dict(_unflatten_optimizer(sidecar["optimizer"], load_file(str(tensor_path))))
    return sidecar
