"""The model table: ``@register_model`` entrypoints and their options. A plain module with no fastmtl imports
beyond the config, so every model file can register itself; :mod:`fastmtl.registry` builds models from it."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

from fastmtl.config import CONFIG_OPTIONS

ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
OPTIONS: dict[str, tuple[str, ...]] = {}


def register_model(options: tuple[str, ...] = CONFIG_OPTIONS) -> Callable:
    """Registers ``fn`` under its own name; ``options`` are the keyword overrides the model accepts."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        ENTRYPOINTS[fn.__name__] = fn
        OPTIONS[fn.__name__] = tuple(options)
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern``."""
    return sorted(n for n in ENTRYPOINTS if fnmatch.fnmatch(n, pattern))


def check_name(name: str) -> None:
    if name not in ENTRYPOINTS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(ENTRYPOINTS))}")
