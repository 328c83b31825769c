"""Training configs as files: TOML (grouped ``[model]`` / ``[data]`` / ``[optim]`` / ``[run]`` tables, or the flat
keys of :data:`~fastmtl.engine.train.config.FLAT_KEYS`), the presets shipped in the package (``fastmtl/configs/``),
``--set key=value`` overrides, and the resolved config written next to a run's outputs.

Overrides are parsed as TOML literals (so ``true``, ``3``, ``[0.9, 0.99]`` and ``"text"`` work) and then typed by
the field: ``model.img_size=64`` or its flat key ``img_size=64``; ``data.options.n=12`` or ``data_options.n=12``
sets one entry of an options table, ``data_options={}`` replaces the whole table. The resolved config is written as
``config.json`` and ``config.toml``; the TOML reloads to an equal config.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import typing
from importlib import resources
from pathlib import Path
from typing import Any

from fastmtl.checkpoint.rundir import RunDir
from fastmtl.engine.train.config import FLAT_KEYS, SECTIONS, TrainConfig, config_from_dict, nest, valid_keys
from fastmtl.files import atomic_write_bytes, read_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["apply_overrides", "load_config", "parse_overrides", "preset_names", "save_config", "to_toml"]

_TABLES = ("model.options", "data.options")  # the fields whose entries --set a.b=... reaches


def preset_names() -> tuple[str, ...]:
    """The presets shipped in the package: ``fastmtl/configs/<name>.toml``, named without the suffix."""
    files = resources.files("fastmtl") / "configs"
    return tuple(sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml")))


def _read_toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{where} is not valid TOML: {e}") from e


def _parse_literal(text: str) -> Any:
    """A TOML literal (number, bool, string, array, inline table) or, failing that, the text itself."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _target(item: str, key: str, value: Any) -> tuple[str, str | None, str | None]:
    """(section, field or None for the whole section, table entry or None) that the ``--set`` key names."""
    head, _, rest = key.partition(".")
    if head in SECTIONS and (rest or isinstance(value, dict)):  # model.img_size=64, data={kind="oct"}
        field, _, entry = rest.partition(".")
        names = [f"{head}.{f}" for f in typing.get_type_hints(SECTIONS[head])]
        if field and f"{head}.{field}" not in names:
            raise ValueError(f"--set {item!r}: unknown key {key!r}; valid keys of [{head}]: {', '.join(names)}")
        target = f"{head}.{field}" if field else None
    elif head in FLAT_KEYS:  # img_size=64, model_options.dfe=none
        target, entry = FLAT_KEYS[head], rest
    else:
        raise ValueError(f"--set {item!r}: unknown key {head!r}; {valid_keys()}")
    if entry and target not in _TABLES:
        raise ValueError(f"--set {item!r}: {target or head} is not a table; only {', '.join(_TABLES)} take a.b")
    if target is None:
        return head, None, None
    section, field = target.split(".")
    return section, field, entry or None


def parse_overrides(items: typing.Sequence[str]) -> list[tuple[str, str | None, str | None, Any]]:
    """``["lr=1e-4", "model_options.dfe=none"]`` -> ``[("optim", "lr", None, 1e-4), ("model", "options", "dfe",
    "none")]``: (section, field, table entry, value); field None: a table of the section's fields.

    Raises:
        ValueError: an item without ``=``, an unknown key, or a dotted key that reaches into no table.
    """
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        value = _parse_literal(text.strip())
        out.append((*_target(item, key, value), value))
    return out


def apply_overrides(
    base: dict[str, Any], items: typing.Sequence[str], source: str = "config"
) -> dict[str, dict[str, Any]]:
    """The sections' tables of ``base`` (grouped or flat, see :func:`~fastmtl.engine.train.config.nest`; read from
    ``source``) with the ``--set`` items applied in order; ``base`` is not modified."""
    tables = nest(base, source).items()
    merged = {s: {k: dict(v) if isinstance(v, dict) else v for k, v in t.items()} for s, t in tables}
    for section, field, entry, value in parse_overrides(items):
        table = merged.setdefault(section, {})
        if field is None:
            table.update(nest({section: value}, "--set")[section])
        elif entry is None:
            table[field] = value
        else:
            current = table.get(field)
            table[field] = {**(current if isinstance(current, dict) else {}), entry: value}
    return merged


def load_config(source: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Loads a TOML file or a shipped preset (:func:`preset_names`: "quick", "demo", "isic2017_paper", ...) and
    applies overrides.

    Args:
        source: a ``.toml`` path, a preset name, or None for the defaults.
        overrides: ``key=value`` strings as given to ``--set``. The environment variable ``FASTMTL_SET``
            (whitespace-separated ``key=value`` items) is applied first, so an explicit override still wins: a way
            to shrink every run of a script or a test, e.g. ``FASTMTL_SET="epochs=1 max_steps_per_epoch=2"``.

    Raises:
        FileNotFoundError: ``source`` is neither a preset nor an existing file.
        ValueError: malformed TOML, unknown keys, or invalid values (messages name the file or key).
    """
    name, base = "defaults", {}
    if source is not None and str(source) in preset_names():
        text = (resources.files("fastmtl") / "configs" / f"{source}.toml").read_text(encoding="utf-8")
        name = f"preset {source!r}"
        base = _read_toml(text, name)
    elif source is not None:
        path = Path(source)
        if not os.path.lexists(path):
            presets = ", ".join(preset_names())
            raise FileNotFoundError(f"config file {path} not found; give a .toml file or a preset ({presets})")
        name = str(path)
        base = _read_toml(read_text(path, "config file"), f"config file {path}")
    from_env = os.environ.get("FASTMTL_SET", "").split()
    return config_from_dict(apply_overrides(base, [*from_env, *overrides], source=name), source=name)


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
    """The config as TOML: one table per section, its options as a sub-table (``[data.options]``)."""
    lines: list[str] = []
    for section, table in config.to_dict().items():
        lines += ["", f"[{section}]"] if lines else [f"[{section}]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
        for key, entries in ((k, v) for k, v in table.items() if isinstance(v, dict)):
            lines += ["", f"[{section}.{key}]", *(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in entries.items())]
    return "\n".join(lines) + "\n"


def save_config(config: TrainConfig, run_dir: RunDir) -> None:
    """Writes ``config.json`` and ``config.toml`` into the run folder atomically."""
    atomic_write_bytes(run_dir.config_json, (json.dumps(config.to_dict(), indent=2) + "\n").encode())
    atomic_write_bytes(run_dir.config_toml, to_toml(config).encode())
