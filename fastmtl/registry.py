"""Building models: :func:`create_model`, :func:`create_model_from_config`, and the table's :func:`list_models` /
:func:`register_model` (the table itself is :mod:`fastmtl.models._registry`; importing :mod:`fastmtl.models`
fills it)."""

from __future__ import annotations

from typing import Any

from torch import nn

import fastmtl.models  # noqa: F401  (registers the entrypoints)
from fastmtl.config import ModelConfig
from fastmtl.models._registry import ENTRYPOINTS, OPTIONS, check_name, list_models, register_model
from fastmtl.models.base import MTLModel
from fastmtl.weights import load_trunk_weights

__all__ = ["create_model", "create_model_from_config", "list_models", "model_options", "register_model"]


def model_options(name: str) -> tuple[str, ...]:
    """The constructor options model ``name`` accepts."""
    check_name(name)
    return OPTIONS[name]


def _built(name: str, model: nn.Module) -> MTLModel:
    """``model`` if the entrypoint of ``name`` kept the contract, else a TypeError naming the entrypoint."""
    if not isinstance(model, MTLModel):
        raise TypeError(f"model {name!r} built a {type(model).__name__}; a registered model derives from "
                        "fastmtl.models.base.MTLModel")  # fmt: skip
    return model


def create_model(name: str, *, trunk_weights: str | None = None, **overrides: Any) -> MTLModel:
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
        TypeError: the registered entrypoint built something that is not an :class:`MTLModel`.
    """
    check_name(name)
    unknown = sorted(set(overrides) - set(OPTIONS[name]))
    if unknown:
        raise ValueError(f"model {name!r} has no option(s) {unknown}; valid options: {', '.join(OPTIONS[name])}")
    model = _built(name, ENTRYPOINTS[name](**overrides))
    if trunk_weights is not None:
        model.trunk_weights_report = load_trunk_weights(model, trunk_weights)
    return model


def create_model_from_config(config: ModelConfig | dict[str, Any]) -> MTLModel:
    """Rebuilds a model from the config stored with it (a :class:`ModelConfig` or its dict form)."""
    if isinstance(config, ModelConfig):
        config = config.to_dict()
    config = dict(config)
    name = config.pop("name")
    check_name(name)
    return _built(name, ENTRYPOINTS[name](**{k: v for k, v in config.items() if k in OPTIONS[name]}))
