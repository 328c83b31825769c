"""fastmtl: ResFormer-MTL (multi-task lesion segmentation + classification), fast and practical.

The public names below are imported on first use (PEP 562), so that ``import fastmtl`` and the ``fastmtl``
command line answer without loading PyTorch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "MTLModel": "fastmtl.models.base",
    "MTLOutput": "fastmtl.output",
    "ModelConfig": "fastmtl.config",
    "create_model": "fastmtl.registry",
    "create_model_from_config": "fastmtl.registry",
    "from_authors_state_dict": "fastmtl.authors",
    "kernel_backend": "fastmtl.backend",
    "list_models": "fastmtl.registry",
    "load_authors_checkpoint": "fastmtl.authors",
    "load_model": "fastmtl.loading",
    "optimize_for_inference": "fastmtl.inference.optimize",
    "register_model": "fastmtl.registry",
    "set_kernel_backend": "fastmtl.models.base",
}
__all__ = [  # the keys of _EXPORTS, spelled out for linters and ``from fastmtl import *``
    "MTLModel",
    "MTLOutput",
    "ModelConfig",
    "create_model",
    "create_model_from_config",
    "from_authors_state_dict",
    "kernel_backend",
    "list_models",
    "load_authors_checkpoint",
    "load_model",
    "optimize_for_inference",
    "register_model",
    "set_kernel_backend",
]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from fastmtl.authors import from_authors_state_dict, load_authors_checkpoint
    from fastmtl.backend import kernel_backend
    from fastmtl.config import ModelConfig
    from fastmtl.inference.optimize import optimize_for_inference
    from fastmtl.loading import load_model
    from fastmtl.models.base import MTLModel, set_kernel_backend
    from fastmtl.output import MTLOutput
    from fastmtl.registry import create_model, create_model_from_config, list_models, register_model


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastmtl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
