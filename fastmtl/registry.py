"""A tiny model registry: ``@register_model`` entrypoints, :func:`create_model`, :func:`list_models`."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

from fastmtl.config import CONFIG_OPTIONS, ModelConfig

_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_OPTIONS: dict[str, tuple[str, ...]] = {}


def register_model(options: tuple[str, ...] = CONFIG_OPTIONS) -> Callable:
    """Registers ``fn`` under its own name; ``options`` are the keyword overrides the model accepts."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _ENTRYPOINTS[fn.__name__] = fn
        _OPTIONS[fn.__name__] = tuple(options)
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern``."""
    _ensure_registered()
    return sorted(n for n in _ENTRYPOINTS if fnmatch.fnmatch(n, pattern))


def model_options(name: str) -> tuple[str, ...]:
    """The constructor options model ``name`` accepts."""
    _ensure_registered()
    _check_name(name)
    return _OPTIONS[name]


def create_model(name: str, *, trunk_weights: str | None = None, **overrides: Any) -> nn.Module:
    """Builds a registered model.

    Args:
        name: one of :func:`list_models`.
        trunk_weights: optional path to a torchvision-format ResNet-34 state_dict (``.pth``/``.pt`` or
            ``.safetensors``) to initialise the convolutional trunk from; nothing is downloaded. What loaded and
            what did not is logged and kept as ``model.trunk_weights_report``.
        **overrides: constructor options, e.g. ``img_size``, ``in_chans``, ``seg_classes``, ``cls_classes``,
            ``dilations``, ``drop_path_rate``, ``kernels`` (see :class:`fastmtl.config.ModelConfig`).

    Raises:
        ValueError: unknown model name or option (the message lists the valid ones), or an invalid value.
    """
    _ensure_registered()
    _check_name(name)
    unknown = sorted(set(overrides) - set(_OPTIONS[name]))
    if unknown:
        raise ValueError(f"model {name!r} has no option(s) {unknown}; valid options: {', '.join(_OPTIONS[name])}")
    model = _ENTRYPOINTS[name](**overrides)
    if trunk_weights is not None:
        from fastmtl.weights import load_trunk_weights

        model.trunk_weights_report = load_trunk_weights(model, trunk_weights)
    return model


def create_model_from_config(config: ModelConfig | dict[str, Any]) -> nn.Module:
    """Rebuilds a model from the config stored with it (a :class:`ModelConfig` or its dict form)."""
    if isinstance(config, ModelConfig):
        config = config.to_dict()
    config = dict(config)
    name = config.pop("name")
    _ensure_registered()
    _check_name(name)
    return _ENTRYPOINTS[name](**{k: v for k, v in config.items() if k in _OPTIONS[name]})


def _check_name(name: str) -> None:
    if name not in _ENTRYPOINTS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(_ENTRYPOINTS))}")


def _ensure_registered() -> None:
    import fastmtl.models  # noqa: F401  (registers the entrypoints)
