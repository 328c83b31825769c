"""Training configuration: one frozen dataclass, loaded from TOML (or a named preset) plus ``key=value`` overrides.

A config file holds the fields of :class:`TrainConfig` as top-level keys; ``model_options`` and ``data_options``
are tables. Overrides use the same names (``lr=1e-4``, ``model_options.drop_path_rate=0``); values are parsed as
TOML literals (so ``true``, ``3``, ``[0.9, 0.99]`` and ``"text"`` work) and then typed by the field. The resolved
config is written next to the outputs as ``config.json`` and ``config.toml``; the TOML reloads to an equal config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastmtl.files import atomic_write_bytes, read_text
from fastmtl.options import AMP_CHOICES, COMPILE_MODES, DATA_KINDS, DEVICES, MIN_MODEL_IMG_SIZE, check_img_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "parse_overrides",
    "save_config",
    "to_toml",
]

_CHOICES = {
    "amp": AMP_CHOICES,
    "device": DEVICES,
    "val_source": ("auto", "dataset", "carve"),
    "normalize": ("imagenet", "raw", "unit"),
    "input_pipeline": ("loader", "device"),
    "compile_mode": COMPILE_MODES,
}
_POSITIVE = ("epochs", "batch_size", "sync_every", "val_every_epochs")
_NON_NEGATIVE = (
    "eval_batch_size",
    "num_workers",
    "max_steps_per_epoch",
    "max_val_steps",
    "checkpoint_every_steps",
    "stop_after_steps",
    "time_limit_min",
    "grad_clip",
    "weight_decay",
    "store_size",
    "max_train_images",
    "checkpoint_every_epochs",
)
# Fields that change how a run executes but not what it computes: a resumed run may change them.
RUNTIME_FIELDS = frozenset(
    {"num_workers", "cache_dir", "stop_after_steps", "time_limit_min", "progress", "device", "sync_every",
     "checkpoint_every_epochs"}
)  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the data folder and the output folder.

    Attributes:
        model: registered model name (see ``fastmtl.list_models()``).
        model_options: model constructor overrides (``seg_classes`` and ``cls_classes`` default to the dataset's).
        trunk_weights: optional torchvision ResNet-34 weights file for the trunk ("" = none; nothing is downloaded).
        data: dataset kind, or "auto" to detect it from the data folder (no folder: synthetic).
        data_options: dataset options passed to ``fastmtl.data.build_dataset`` (vendor, task, n, augment, ...).
        val_source: "dataset" uses the dataset's own validation split, "carve" holds out ``val_fraction`` of the
            training split (stratified by label, grouped by subject/volume when groups repeat), "auto" prefers the
            former when it exists. The test split is never used.
        val_fraction: share of the training split held out when carving.
        img_size: input side (multiple of 16).
        normalize: pixel normalisation, "imagenet", "raw" (0..255 as the authors) or "unit".
        epochs: training epochs.
        batch_size: images per optimizer step per process.
        eval_batch_size: validation batch size (0 = ``batch_size``).
        lr: base learning rate of the poly schedule.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        poly_power: exponent of ``lr = base * (1 - it / max_it) ** power``, stepped every iteration.
        alpha: weight of the classification loss.
        class_weights: weight the classification loss by inverse class frequency of the training labels.
        seed: seed of the model init, data order and augmentation.
        split_seed: seed of the validation split carved from training; separate from ``seed`` so that runs with
            different seeds are measured on the same held-out cases (the case ids go to ``split.json``).
        amp: mixed precision: "auto" (bf16 on CUDA, off on CPU), "bf16", "fp16" (with a grad scaler) or "off".
        channels_last: run the model in channels-last memory format.
        compile: wrap the model with ``torch.compile`` (with ``device_step``: the forward and loss of the step).
        compile_mode: ``torch.compile`` mode; "reduce-overhead" adds CUDA graphs (static shapes: keep
            ``drop_last``).
        grad_clip: max global gradient norm (0 = no clipping).
        deterministic: deterministic algorithms (bit-exact reruns on one device), no cuDNN autotuning.
        device: "auto" (CUDA when available), "cpu" or "cuda".
        num_workers: DataLoader worker processes.
        cache_dir: decoded-image cache folder ("" = the library default, "off" = memory only).
        max_steps_per_epoch: cap on optimizer steps per epoch (0 = full epoch); for quick runs.
        max_val_steps: cap on validation batches (0 = the whole validation split).
        checkpoint_every_steps: also save ``last`` every this many steps inside an epoch (0 = epoch ends only).
        stop_after_steps: debug: return after this global step without saving, like a killed run (0 = off).
        time_limit_min: stop after this many minutes of this process, saving ``last`` mid-epoch so that
            ``--resume`` continues exactly there (0 = no limit); for time-boxed jobs.
        drop_last: drop the last incomplete training batch of each epoch.
        progress: show a tqdm progress bar.
        input_pipeline: "loader" (DataLoader workers, per-sample augmentation) or "device" (the training split
            decoded once into uint8 tensors on the training device and augmented there in batches, see
            :mod:`fastmtl.engine.train.device_loader`; validation is decoded and evaluated on the device too).
        store_size: side of the stored training images on the device path (0 = ``img_size``); larger than
            ``img_size``, the augmentation's single resampling also resizes (e.g. 256 -> 224).
        device_step: the step without host round trips (:mod:`fastmtl.engine.train.device_step`): fused AdamW on CUDA,
            the poly learning rate computed on the device, losses summed there and read every ``sync_every``
            steps.
        sync_every: with ``device_step``, read the summed losses (and check them for NaN / inf) every this many
            steps; a non-finite loss then stops the run up to this many steps late.
        val_every_epochs: validate every this many epochs (and always after the last one); checkpoint selection
            only sees validated epochs.
        checkpoint_every_epochs: save ``last`` at the end of every this many epochs (0 = only when the run ends
            or stops); the periodic mid-epoch and time-limit saves are unaffected.
        max_train_images: train on the first this many images of the training split (0 = all); for dry runs.
        skip_bad: leave out the cases whose image or mask cannot be read or whose sizes differ (recorded in
            ``split.json``) instead of stopping with an error naming them.
    """

    model: str = "resformer_mtl"
    model_options: dict[str, Any] = field(default_factory=dict)
    trunk_weights: str = ""
    data: str = "auto"
    data_options: dict[str, Any] = field(default_factory=dict)
    val_source: str = "auto"
    val_fraction: float = 0.1
    img_size: int = 224
    normalize: str = "imagenet"
    epochs: int = 150
    batch_size: int = 8
    eval_batch_size: int = 0
    lr: float = 7e-5
    weight_decay: float = 3e-5
    betas: tuple[float, float] = (0.9, 0.999)
    poly_power: float = 0.9
    alpha: float = 0.25
    class_weights: bool = True
    seed: int = 1234
    split_seed: int = 1234
    amp: str = "auto"
    channels_last: bool = False
    compile: bool = False
    grad_clip: float = 0.0
    deterministic: bool = False
    device: str = "auto"
    num_workers: int = 2
    cache_dir: str = ""
    max_steps_per_epoch: int = 0
    max_val_steps: int = 0
    checkpoint_every_steps: int = 0
    stop_after_steps: int = 0
    time_limit_min: float = 0.0
    drop_last: bool = True
    progress: bool = True
    input_pipeline: str = "loader"
    store_size: int = 0
    device_step: bool = False
    sync_every: int = 1
    compile_mode: str = "default"
    val_every_epochs: int = 1
    checkpoint_every_epochs: int = 1
    max_train_images: int = 0
    skip_bad: bool = False

    def __post_init__(self) -> None:
        for key, valid in {**_CHOICES, "data": ("auto", *DATA_KINDS)}.items():
            if getattr(self, key) not in valid:
                value = getattr(self, key)
                raise ValueError(f"config {key}={value!r} is not valid; expected one of {', '.join(valid)}")
        check_img_size(self.img_size, "config img_size", MIN_MODEL_IMG_SIZE)
        for key in _POSITIVE:
            if getattr(self, key) < 1:
                raise ValueError(f"config {key} must be >= 1, got {getattr(self, key)}")
        for key in _NON_NEGATIVE:
            if not getattr(self, key) >= 0 or not math.isfinite(getattr(self, key)):  # NaN fails >= as well
                raise ValueError(f"config {key} must be a finite number >= 0, got {getattr(self, key)}")
        for key in ("poly_power", "alpha"):
            if not (getattr(self, key) >= 0 and math.isfinite(getattr(self, key))):
                raise ValueError(f"config {key} must be a finite number >= 0, got {getattr(self, key)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"config val_fraction must be in (0, 1), got {self.val_fraction}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"config lr must be a positive finite number, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"config betas must be two numbers in [0, 1), got {self.betas}")
        if self.store_size and self.store_size < self.img_size:
            raise ValueError(f"config store_size={self.store_size} is smaller than img_size={self.img_size}")

    @property
    def resolved_eval_batch_size(self) -> int:
        """Validation batch size."""
        return self.eval_batch_size or self.batch_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (typed and validated like overrides)."""
        return config_from_dict({**self.to_dict(), **changes})


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Converts a parsed value to the type of field ``key``; raises ValueError naming the key."""
    origin = typing.get_origin(kind)
    bad = ValueError(f"config {key} expects {getattr(kind, '__name__', kind)}, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad  # int() of NaN or inf would raise its own error, naming no key
        if int(value) != value:
            raise bad
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if kind is str:
        if isinstance(value, (dict, list)):
            raise bad
        return str(value).lower() if isinstance(value, bool) else str(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        return tuple(_coerce(key, v, float) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    raise bad  # pragma: no cover - every field type is handled above


def config_from_dict(d: dict[str, Any], source: str = "config") -> TrainConfig:
    """Builds a :class:`TrainConfig` from a plain dict, typing each value by its field.

    Raises:
        ValueError: an unknown key (the message lists the valid ones) or a value of the wrong type.
    """
    types = _field_types()
    unknown = sorted(set(d) - set(types))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; valid keys: {', '.join(types)}")
    return TrainConfig(**{k: _coerce(k, v, types[k]) for k, v in d.items()})


def _parse_literal(text: str) -> Any:
    """A TOML literal (number, bool, string, array, inline table) or, failing that, the text itself."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(items: typing.Sequence[str]) -> list[tuple[str, str | None, Any]]:
    """``["lr=1e-4", "model_options.dfe=none"]`` -> ``[("lr", None, 1e-4), ("model_options", "dfe", "none")]``.

    Raises:
        ValueError: an item without ``=``, an unknown key, or a dotted key whose head is not a table field.
    """
    types = _field_types()
    out: list[tuple[str, str | None, Any]] = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        head, dot, sub = key.partition(".")
        if head not in types:
            raise ValueError(f"--set {item!r}: unknown key {head!r}; valid keys: {', '.join(types)}")
        if dot and typing.get_origin(types[head]) is not dict:
            raise ValueError(f"--set {item!r}: {head!r} is not a table; only model_options and data_options take a.b")
        out.append((head, sub if dot else None, _parse_literal(text.strip())))
    return out


def apply_overrides(base: dict[str, Any], items: typing.Sequence[str]) -> dict[str, Any]:
    """Applies ``--set`` items in order: ``key=value`` replaces a field (a whole table too), ``table.key=value``
    sets one entry of a table."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, sub, value in parse_overrides(items):
        if sub is None:
            merged[key] = value
        else:
            table = merged.get(key)
            merged[key] = {**(table if isinstance(table, dict) else {}), sub: value}
    return merged


def load_config(source: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Loads a TOML file or a named preset (see :data:`fastmtl.presets.PRESETS`) and applies overrides.

    Args:
        source: a ``.toml`` path, a preset name such as "quick", or None for the defaults.
        overrides: ``key=value`` strings as given to ``--set``. The environment variable ``FASTMTL_SET``
            (whitespace-separated ``key=value`` items) is applied first, so an explicit override still wins: a way
            to shrink every run of a script or a test, e.g. ``FASTMTL_SET="epochs=1 max_steps_per_epoch=2"``.

    Raises:
        FileNotFoundError: ``source`` is neither a preset nor an existing file.
        ValueError: malformed TOML, unknown keys, or invalid values (messages name the file or key).
    """
    from fastmtl.presets import PRESETS

    name = "defaults"
    base: dict[str, Any] = {}
    if source is not None and str(source) in PRESETS:
        name, base = f"preset {source!r}", dict(PRESETS[str(source)])
    elif source is not None:
        path = Path(source)
        if not os.path.lexists(path):
            presets = ", ".join(PRESETS)
            raise FileNotFoundError(f"config file {path} not found; give a .toml file or a preset ({presets})")
        try:
            base = tomllib.loads(read_text(path, "config file"))
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config file {path} is not valid TOML: {e}") from e
        name = str(path)
    from_env = os.environ.get("FASTMTL_SET", "").split()
    return config_from_dict(apply_overrides(base, [*from_env, *overrides]), source=name)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if value is None:
        raise ValueError("TOML has no null; use an empty string or leave the key out")
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def to_toml(config: TrainConfig) -> str:
    """The config as TOML: scalars first, then one table per dict field."""
    d = config.to_dict()
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for key, table in d.items():
        if isinstance(table, dict):
            lines += ["", f"[{key}]", *(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def save_config(config: TrainConfig, out_dir: str | Path) -> None:
    """Writes ``config.json`` and ``config.toml`` into ``out_dir`` atomically."""
    out_dir = Path(out_dir)
    atomic_write_bytes(out_dir / "config.json", (json.dumps(config.to_dict(), indent=2) + "\n").encode())
    atomic_write_bytes(out_dir / "config.toml", to_toml(config).encode())
