"""Datasets for ResFormer-MTL: ISIC 2017, RETOUCH volumes, OCT manifests, plain folders and synthetic lesions.

Every dataset returns the sample dict described in :mod:`fastmtl.data.base` and answers for its own facts:
``class_names`` / ``seg_class_names``, ``resolve_split(name)`` (split aliases) and ``own_val_split(root)``.
:data:`DATASETS` is the one table of kinds (:mod:`fastmtl.data.registry`): :func:`dataset_class` gives a kind's
class, :func:`build_dataset` builds one split by kind, :func:`detect_kind` guesses the kind from a folder layout
and :func:`split_indices` makes seeded stratified or grouped splits (wrap the result with :func:`subset` to keep
``labels`` and friends).
"""

from __future__ import annotations

from fastmtl.data.base import MTLDataset, make_cache
from fastmtl.data.cache import ArrayCache, default_cache_dir
from fastmtl.data.folder import ImageFolder
from fastmtl.data.io import ImageReadError, read_image, read_mask
from fastmtl.data.isic2017 import ISIC2017, ISIC_CLASSES
from fastmtl.data.oct import OCTManifest
from fastmtl.data.preflight import Problem, check_data, write_report
from fastmtl.data.registry import DATASET_KINDS, DATASETS, build_dataset, dataset_class, detect_kind
from fastmtl.data.retouch import Retouch
from fastmtl.data.splits import DatasetSubset, group_split, split_indices, stratified_split, subset
from fastmtl.data.synthetic import SyntheticLesions
from fastmtl.data.transforms import PairTransform, build_transforms, denormalize, normalize_image

__all__ = [
    "DATASETS",
    "DATASET_KINDS",
    "ArrayCache",
    "DatasetSubset",
    "ISIC2017",
    "ISIC_CLASSES",
    "ImageFolder",
    "ImageReadError",
    "MTLDataset",
    "OCTManifest",
    "PairTransform",
    "Retouch",
    "SyntheticLesions",
    "build_dataset",
    "build_transforms",
    "dataset_class",
    "default_cache_dir",
    "denormalize",
    "detect_kind",
    "group_split",
    "make_cache",
    "normalize_image",
    "read_image",
    "read_mask",
    "Problem",
    "check_data",
    "write_report",
    "split_indices",
    "stratified_split",
    "subset",
]
