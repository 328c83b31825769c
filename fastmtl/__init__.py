"""fastmtl: ResFormer-MTL (multi-task lesion segmentation + classification), fast and practical."""

from fastmtl.authors import from_authors_state_dict, load_authors_checkpoint
from fastmtl.backend import kernel_backend, set_kernel_backend
from fastmtl.config import ModelConfig
from fastmtl.inference import optimize_for_inference
from fastmtl.output import MTLOutput
from fastmtl.registry import create_model, create_model_from_config, list_models, register_model

__version__ = "0.1.0"

__all__ = [
    "MTLOutput",
    "ModelConfig",
    "create_model",
    "create_model_from_config",
    "from_authors_state_dict",
    "kernel_backend",
    "list_models",
    "load_authors_checkpoint",
    "optimize_for_inference",
    "register_model",
    "set_kernel_backend",
]
