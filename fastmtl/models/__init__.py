"""Registered models, all :class:`~fastmtl.models.base.MTLModel` s. Importing this package registers them."""

from fastmtl.models import baselines, mtl  # noqa: F401  (registration side effect)
from fastmtl.models.base import MTLModel
from fastmtl.models.baselines import ResNet34Classifier, UNetResNet34
from fastmtl.models.mtl import ResFormerMTL

__all__ = ["MTLModel", "ResFormerMTL", "ResNet34Classifier", "UNetResNet34"]
