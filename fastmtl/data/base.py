"""The sample contract and the machinery every file-backed dataset shares.

A sample is a dict:

- ``"image"``: float32 (C, H, W), normalised (``normalize`` = "imagenet" | "raw" | "unit"); C = 3 unless
  ``in_chans=1`` (greyscale sources are replicated to 3 channels by default).
- ``"mask"``: int64 (H, W) class indices (binary 0/1); all zeros when the sample has no mask.
- ``"has_mask"``: bool tensor ().
- ``"label"``: float32 (K,) multi-label 0/1 targets (zeros when unknown); ``"has_label"``: bool tensor ().
- ``"id"``: str; ``"orig_size"``: int64 (2,) = (H0, W0) of the source image.

Every dataset exposes ``class_names`` (the K classification labels), ``seg_classes`` (1 for binary, else
classes incl. background), ``seg_class_names`` (the foreground classes, metric keys such as ``dsc_<name>``),
``labels`` (float32 (N, K)), ``has_labels`` / ``has_masks`` (bool (N,)), ``groups`` (per-sample group id
for grouped splits) and ``ids``. Each class also owns its split vocabulary: :meth:`MTLDataset.resolve_split`
maps an alias ("training", "validation", "val", ...) to the name its constructor uses, and
:meth:`MTLDataset.own_val_split` names the validation split it ships with (None: training carves one).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from fastmtl.data import io
from fastmtl.data.cache import ArrayCache, default_cache_dir, resize_image, resize_mask, source_key
from fastmtl.data.tables import Problem, refuse
from fastmtl.data.transforms import NORMALIZE_MODES, build_transforms, normalize_image, to_hw

__all__ = ["MTLDataset", "binarize_mask", "encode_mask", "make_cache", "CacheDir"]

CacheDir = str | Path | ArrayCache | bool | None
Arrays = dict[str, np.ndarray]
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def make_cache(cache_dir: CacheDir) -> ArrayCache:
    """None -> the default folder (``$FASTMTL_CACHE`` or ``~/.cache/fastmtl``); False -> process memory only."""
    if isinstance(cache_dir, ArrayCache):
        return cache_dir
    if cache_dir is None or cache_dir is True:
        return ArrayCache(default_cache_dir())
    if cache_dir is False:
        return ArrayCache(None)
    return ArrayCache(cache_dir)


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """Lesion = 1. A clean two-valued map ``{0, v}`` marks the lesion with ``v`` whatever it is (0/1, 0/2, 0/100, a
    16-bit 0/1000 read as 0/62, 0/255); masks with more values (JPEG noise) are thresholded at 127 when their
    maximum exceeds 127 (0/255 masks), else at half their maximum."""
    if mask.size == 0:
        return np.zeros(mask.shape, np.uint8)
    top = int(mask.max())
    if top <= 1 or np.count_nonzero(np.bincount(mask.ravel(), minlength=256)) <= 2:
        return (mask > 0).astype(np.uint8)
    return (mask > (127 if top > 127 else top // 2)).astype(np.uint8)


def encode_mask(mask: np.ndarray, rule: str | np.ndarray, seg_classes: int, path: Path) -> np.ndarray:
    """Turns stored mask values into class indices.

    Args:
        mask: uint8 (H, W) as read from disk.
        rule: "binary" (:func:`binarize_mask`), "any" (every non-zero value is foreground), "index" (values
            are class indices already) or a uint8 (256,) lookup table from stored value to class index.
        seg_classes: number of classes incl. background (1 means binary) for validation.
        path: the mask file, named in errors.
    """
    if isinstance(rule, np.ndarray):
        out = rule[mask]
    elif rule == "binary":
        out = binarize_mask(mask)
    elif rule == "any":
        out = (mask > 0).astype(np.uint8)
    elif rule == "index":
        out = mask
    else:
        raise ValueError(f"unknown mask rule {rule!r}")
    top = int(out.max()) if out.size else 0
    if top >= max(seg_classes, 2):
        raise ValueError(f"mask {path} holds value {top} but the dataset has {max(seg_classes, 2)} classes")
    return out


def _rule_key(rule: str | np.ndarray) -> str:
    return rule if isinstance(rule, str) else "lut:" + bytes(rule.astype(np.uint8)).hex()


class MTLDataset(Dataset):
    """Base class: subclasses fill ``ids``, ``labels``, ``has_labels``, ``has_masks``, ``groups`` and
    implement :meth:`_load`.

    Args:
        img_size: stored and output size (int or (h, w)); None keeps each source's size (batch size 1).
        train: apply the training augmentation.
        normalize: "imagenet", "raw" or "unit".
        cache_dir: see :func:`make_cache`.
        in_chans: 3 (default) or 1 (luminance) channels in ``"image"``.
        augment: overrides for :class:`~fastmtl.data.transforms.PairTransform` (hflip_p, rotate_p, degrees).
        strict_labels: refuse a label table (or a volume) with problems, naming the first
            (:func:`fastmtl.data.tables.refuse`); False leaves the bad rows out and keeps every problem in
            ``label_problems`` (what ``fastmtl check-data`` lists).
    """

    class_names: tuple[str, ...] = ()
    seg_classes: int = 1
    seg_class_names: tuple[str, ...] = ("lesion",)
    # alias (lower case) -> the split name the constructor takes
    SPLITS: ClassVar[dict[str, str]] = {
        "train": "train", "training": "train", "val": "val", "validation": "val", "test": "test", "all": "all"
    }  # fmt: skip

    @classmethod
    def resolve_split(cls, name: str) -> str:
        """The split this dataset calls ``name`` ("validation" -> "val", "Training" -> "train", ...).

        Raises:
            ValueError: the dataset has no split of that name.
        """
        split = cls.SPLITS.get(name.lower())
        if split is None:
            raise ValueError(f"unknown {cls.__name__} split {name!r}; expected one of {', '.join(cls.SPLITS)}")
        return split

    @classmethod
    def own_val_split(cls, root: str | Path | None) -> str | None:
        """The validation split the data at ``root`` comes with, or None when training must carve one."""
        return None

    def __init__(
        self,
        *,
        img_size: int | tuple[int, int] | None,
        train: bool,
        normalize: str = "imagenet",
        cache_dir: CacheDir = None,
        in_chans: int = 3,
        augment: dict[str, float] | None = None,
        strict_labels: bool = True,
    ) -> None:
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        self.img_size = to_hw(img_size)
        self.train = bool(train)
        self.normalize = normalize
        self.in_chans = in_chans
        self.transform = build_transforms(self.img_size, self.train, **(augment or {}))
        self.cache = make_cache(cache_dir)
        self.ids: list[str] = []
        self.labels = np.zeros((0, len(self.class_names)), dtype=np.float32)
        self.has_labels = np.zeros(0, dtype=bool)
        self.has_masks = np.zeros(0, dtype=bool)
        self.groups = np.zeros(0, dtype=object)
        self.strict_labels = bool(strict_labels)
        self.label_problems: list[Problem] = []

    def _table_problems(self, problems: list[Problem]) -> None:
        """Refuses ``problems`` (strict) or records them in ``label_problems``."""
        if self.strict_labels:
            refuse(problems)
        self.label_problems.extend(problems)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={len(self)}, img_size={self.img_size}, train={self.train}, "
            f"classes={list(self.class_names)}, seg_classes={self.seg_classes}, cache={self.cache!r})"
        )

    def _load(self, index: int) -> Arrays:
        """Returns ``{"image": uint8 (h, w, 3) or (h, w), "orig_size": int (2,)}`` plus ``"mask"`` if any."""
        raise NotImplementedError

    def _load_files(self, image_path: Path, mask_path: Path | None, rule: str | np.ndarray) -> Arrays:
        """Decodes, checks and resizes an image (and mask) file pair through the cache."""
        sources = [image_path] if mask_path is None else [image_path, mask_path]
        key = source_key(sources, "pair", self.img_size, _rule_key(rule), self.seg_classes)

        def build() -> Arrays:
            image = io.read_image(image_path)  # (H0, W0, 3)
            arrays = {"image": resize_image(image, self.img_size), "orig_size": np.array(image.shape[:2])}
            if mask_path is not None:
                raw = io.read_mask(mask_path)  # (H0, W0)
                if raw.shape != image.shape[:2]:
                    raise ValueError(
                        f"size mismatch: image {image_path} is {image.shape[0]}x{image.shape[1]} (HxW) but "
                        f"mask {mask_path} is {raw.shape[0]}x{raw.shape[1]}"
                    )
                arrays["mask"] = resize_mask(encode_mask(raw, rule, self.seg_classes, mask_path), self.img_size)
            return arrays

        return self.cache.get_or_build(key, build)

    def __getitem__(self, index: int) -> dict[str, object]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index = index % len(self)
        arrays = self._load(index)
        pixels = torch.from_numpy(np.require(arrays["image"], requirements=["C", "W"]))
        image = pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)  # (C, h, w) uint8
        if image.shape[0] == 1 and self.in_chans == 3:
            image = image.expand(3, -1, -1)
        has_mask = "mask" in arrays
        mask = (
            torch.from_numpy(np.require(arrays["mask"], requirements=["C", "W"]))
            if has_mask
            else torch.zeros(image.shape[-2:], dtype=torch.uint8)
        )
        image, mask = self.transform(image.contiguous(), mask)
        if self.in_chans == 1 and image.shape[0] == 3:
            image = (image.float() * _LUMA[:, None, None]).sum(0, keepdim=True).round().to(torch.uint8)
        return {
            "image": normalize_image(image, self.normalize),  # (C, H, W) float32
            "mask": mask.long(),  # (H, W)
            "has_mask": torch.tensor(has_mask),
            "label": torch.tensor(self.labels[index], dtype=torch.float32),  # (K,)
            "has_label": torch.tensor(bool(self.has_labels[index])),
            "id": self.ids[index],
            "orig_size": torch.as_tensor(np.asarray(arrays["orig_size"]), dtype=torch.int64),  # (2,)
        }

    def _finalize(self, ids: list[str], labels: np.ndarray, has_labels, has_masks, groups) -> None:
        """Stores the per-sample tables and checks their lengths agree (and the names the segmentation classes)."""
        if len(self.seg_class_names) != max(self.seg_classes - 1, 1):
            raise ValueError(
                f"{type(self).__name__} names segmentation classes {self.seg_class_names} but has "
                f"seg_classes={self.seg_classes} (one name per foreground class)"
            )
        n = len(ids)
        self.ids = list(ids)
        self.labels = np.asarray(labels, dtype=np.float32).reshape(n, len(self.class_names))
        self.has_labels = np.asarray(has_labels, dtype=bool).reshape(n)
        self.has_masks = np.asarray(has_masks, dtype=bool).reshape(n)
        self.groups = np.asarray(groups, dtype=object).reshape(n)
