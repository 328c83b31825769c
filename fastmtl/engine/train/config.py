"""Training configuration: a frozen :class:`TrainConfig` of four sections, ``model`` / ``data`` / ``optim`` / ``run``.

The sections are TOML tables (``[model]``, ``[data]``, ...) and dotted ``--set`` keys (``model.img_size=64``,
``data.options.n=12``). The flat keys of earlier configs (``img_size = 64``, ``--set lr=1e-4``,
``model_options.dfe=none``) are accepted too: :data:`FLAT_KEYS`, one table, says which section field each names.
Values are typed by the field (:func:`config_from_dict`); reading and writing TOML and the ``--set`` overrides are
in :mod:`fastmtl.engine.train.config_file`. No PyTorch here: the command line checks a config before importing it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from fastmtl.options import AMP_CHOICES, COMPILE_MODES, DATA_KINDS, DEVICES, MIN_MODEL_IMG_SIZE, check_img_size

__all__ = [
    "FLAT_KEYS",
    "RUNTIME_FIELDS",
    "SECTIONS",
    "DataSection",
    "ModelSection",
    "OptimSection",
    "RunSection",
    "TrainConfig",
    "config_from_dict",
    "nest",
]


def _choose(section: str, obj: Any, choices: dict[str, tuple[str, ...]]) -> None:
    for key, valid in choices.items():
        if getattr(obj, key) not in valid:
            value = getattr(obj, key)
            raise ValueError(f"config {section}.{key}={value!r} is not valid; expected one of {', '.join(valid)}")


def _at_least(section: str, obj: Any, low: int, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = getattr(obj, key)
        if low == 1 and value < 1:
            raise ValueError(f"config {section}.{key} must be >= 1, got {value}")
        if low == 0 and not (value >= 0 and math.isfinite(value)):  # NaN fails >= as well
            raise ValueError(f"config {section}.{key} must be a finite number >= 0, got {value}")


@dataclass(frozen=True)
class ModelSection:
    """The model: ``name`` (see ``fastmtl.list_models()``), ``img_size`` (the input side the model is built for
    and the data is resized to: the one owner of the image size), ``options`` (constructor overrides;
    ``seg_classes`` and ``cls_classes`` default to the dataset's) and ``trunk_weights`` (an optional torchvision
    ResNet-34 weights file for the trunk, "" = none; nothing is downloaded)."""

    name: str = "resformer_mtl"
    options: dict[str, Any] = field(default_factory=dict)
    img_size: int = 224
    trunk_weights: str = ""

    def __post_init__(self) -> None:
        check_img_size(self.img_size, "config model.img_size", MIN_MODEL_IMG_SIZE)
        if "img_size" in self.options:
            raise ValueError(
                "config model.options.img_size: the image size is model.img_size (img_size = ... in a flat file); "
                "leave it out of the model options"
            )


@dataclass(frozen=True)
class DataSection:
    """The data: ``kind`` (a dataset kind, or "auto" to detect it from the folder; no folder: synthetic),
    ``options`` (passed to ``fastmtl.data.build_dataset``: vendor, task, n, augment, ...), ``val_source``
    ("dataset": the dataset's own validation split, "carve": ``val_fraction`` of training held out, stratified by
    label and grouped by subject, with ``split_seed`` so that runs of other seeds are measured on the same cases;
    "auto": the former when it exists), ``normalize`` ("imagenet", "raw" 0..255 as the authors, or "unit"),
    ``input_pipeline`` ("loader": DataLoader workers; "device": the splits decoded once into uint8 tensors on the
    training device and augmented there, :mod:`fastmtl.engine.train.device_loader`), ``store_size`` (side of the
    stored images on the device path, 0 = ``model.img_size``), ``num_workers``, ``cache_dir`` ("" = the library
    default, "off" = memory only), ``max_train_images`` (0 = all), ``skip_bad`` (leave out unreadable cases,
    recorded in ``split.json``, instead of stopping) and ``drop_last``."""

    kind: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)
    val_source: str = "auto"
    val_fraction: float = 0.1
    split_seed: int = 1234
    normalize: str = "imagenet"
    input_pipeline: str = "loader"
    store_size: int = 0
    num_workers: int = 2
    cache_dir: str = ""
    max_train_images: int = 0
    skip_bad: bool = False
    drop_last: bool = True

    def __post_init__(self) -> None:
        _choose("data", self, {
            "kind": ("auto", *DATA_KINDS),
            "val_source": ("auto", "dataset", "carve"),
            "normalize": ("imagenet", "raw", "unit"),
            "input_pipeline": ("loader", "device"),
        })  # fmt: skip
        _at_least("data", self, 0, ("store_size", "num_workers", "max_train_images"))
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"config data.val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class OptimSection:
    """The optimization: AdamW (``lr``, ``weight_decay``, ``betas``) with the poly schedule ``lr = base * (1 - it
    / max_it) ** poly_power`` stepped every iteration, ``epochs`` of at most ``max_steps_per_epoch`` steps (0 = full
    epochs) of ``batch_size`` images per process, the loss ``seg + alpha * cls`` (``class_weights``: by inverse
    class frequency of the training labels), ``grad_clip`` (max global norm, 0 = none) and ``seed`` (model init,
    data order and augmentation)."""

    epochs: int = 150
    batch_size: int = 8
    max_steps_per_epoch: int = 0
    lr: float = 7e-5
    weight_decay: float = 3e-5
    betas: tuple[float, float] = (0.9, 0.999)
    poly_power: float = 0.9
    alpha: float = 0.25
    class_weights: bool = True
    grad_clip: float = 0.0
    seed: int = 1234

    def __post_init__(self) -> None:
        _at_least("optim", self, 1, ("epochs", "batch_size"))
        _at_least("optim", self, 0, ("max_steps_per_epoch", "weight_decay", "poly_power", "alpha", "grad_clip"))
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"config optim.lr must be a positive finite number, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"config optim.betas must be two numbers in [0, 1), got {self.betas}")


_RUN_CHOICES = {
    "device": DEVICES,
    "amp": AMP_CHOICES,
    "compile_mode": COMPILE_MODES,
}


@dataclass(frozen=True)
class RunSection:
    """How the run executes: ``device`` ("auto" = CUDA when available), ``amp`` ("auto": bf16 on CUDA, off on
    CPU; "fp16" with a grad scaler), ``channels_last``, ``compile`` / ``compile_mode`` (``torch.compile``;
    "reduce-overhead" adds CUDA graphs), ``deterministic`` (bit-exact reruns on one device), ``device_step`` (the
    step without host round trips, :mod:`fastmtl.engine.train.device_step`, reading its losses every
    ``sync_every`` steps), validation (every ``val_every_epochs`` epochs and after the last, at most
    ``max_val_steps`` batches, 0 = all, of ``eval_batch_size`` images, 0 = the training batch size), checkpoints
    (``last`` every ``checkpoint_every_epochs`` epochs, 0 = at the end only, and every ``checkpoint_every_steps``
    steps), ``time_limit_min`` (stop saving ``last`` mid-epoch, for ``--resume``; 0 = none), ``stop_after_steps``
    (debug: return after this global step without saving, like a killed run) and ``progress`` (a tqdm bar)."""

    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"
    deterministic: bool = False
    device_step: bool = False
    sync_every: int = 1
    val_every_epochs: int = 1
    max_val_steps: int = 0
    eval_batch_size: int = 0
    checkpoint_every_epochs: int = 1
    checkpoint_every_steps: int = 0
    time_limit_min: float = 0.0
    stop_after_steps: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        _choose("run", self, _RUN_CHOICES)
        _at_least("run", self, 1, ("sync_every", "val_every_epochs"))
        _at_least("run", self, 0, ("max_val_steps", "eval_batch_size", "checkpoint_every_epochs",
                                   "checkpoint_every_steps", "time_limit_min", "stop_after_steps"))  # fmt: skip


SECTIONS: dict[str, type] = {"model": ModelSection, "data": DataSection, "optim": OptimSection, "run": RunSection}
# The flat keys (earlier configs, --set lr=...): each names one section field. Most are the field's own name; the
# model's and the data's name and options keep their flat names.
_RENAMED = {"model.name": "model", "model.options": "model_options", "data.kind": "data",
            "data.options": "data_options"}  # fmt: skip
FLAT_KEYS: dict[str, str] = {
    _RENAMED.get(f"{s}.{f.name}", f.name): f"{s}.{f.name}"
    for s, cls in SECTIONS.items()
    for f in dataclasses.fields(cls)
}
# Fields that change how a run executes but not what it computes: a resumed run may change them.
RUNTIME_FIELDS = frozenset(
    {"data.num_workers", "data.cache_dir", "run.stop_after_steps", "run.time_limit_min", "run.progress",
     "run.device", "run.sync_every", "run.checkpoint_every_epochs"}
)  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the data folder and the output folder, in four sections."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self) -> None:
        store, side = self.data.store_size, self.model.img_size
        if store and store < side:
            raise ValueError(f"config data.store_size={store} is smaller than model.img_size={side}")

    @property
    def eval_batch_size(self) -> int:
        """Validation batch size: ``run.eval_batch_size`` or, when 0, the training batch size."""
        return self.run.eval_batch_size or self.optim.batch_size

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """JSON-ready nested dict, one table per section (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["optim"]["betas"] = list(self.optim.betas)
        return d

    def flat(self) -> dict[str, Any]:
        """``{"section.field": value}`` over every field (the resume check compares these)."""
        return {f"{s}.{k}": v for s, table in self.to_dict().items() for k, v in table.items()}

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed, named by their flat keys (``lr=...``) or as whole sections
        (``model={"img_size": 64}``: those fields of the section); typed and validated like overrides."""
        merged = self.to_dict()
        for section, table in nest(changes, "replace").items():
            merged[section].update(table)
        return config_from_dict(merged)


def nest(d: dict[str, Any], source: str = "config") -> dict[str, dict[str, Any]]:
    """The sections' tables of a config dict in the grouped form (``{"model": {"img_size": 64}}``), the flat form
    (``{"img_size": 64}``, :data:`FLAT_KEYS`) or a mix; a flat ``model`` or ``data`` is the model name or the
    data kind, a table under those names the section.

    Raises:
        ValueError: an unknown key or section field (the message lists the valid ones).
    """
    unknown = sorted(k for k, v in d.items() if k not in FLAT_KEYS and not (k in SECTIONS and isinstance(v, dict)))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; {valid_keys()}")
    out: dict[str, dict[str, Any]] = {}
    for key, value in d.items():
        if key in SECTIONS and isinstance(value, dict):
            names = [f.name for f in dataclasses.fields(SECTIONS[key])]
            unknown = sorted(set(value) - set(names))
            if unknown:
                raise ValueError(f"{source}: unknown key(s) {unknown} in [{key}]; valid keys there: {', '.join(names)}")
            out.setdefault(key, {}).update(value)
        else:
            section, name = FLAT_KEYS[key].split(".")
            out.setdefault(section, {})[name] = value
    return out


def valid_keys() -> str:
    """The keys a config takes, for error messages."""
    return f"valid keys: {', '.join(FLAT_KEYS)}; or the sections' tables {', '.join(f'[{s}]' for s in SECTIONS)}"


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
    """Builds a :class:`TrainConfig` from a plain dict (grouped, flat or mixed, see :func:`nest`), typing each
    value by its field.

    Raises:
        ValueError: an unknown key (the message lists the valid ones) or a value of the wrong type.
    """
    sections = {}
    for section, table in nest(d, source).items():
        types = typing.get_type_hints(SECTIONS[section])
        typed = {k: _coerce(f"{section}.{k}", v, types[k]) for k, v in table.items()}
        sections[section] = SECTIONS[section](**typed)
    return TrainConfig(**sections)
