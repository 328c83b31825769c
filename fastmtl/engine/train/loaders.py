"""Training and validation data for a run: the splits, a resumable sampler and reproducible augmentation.

Reproducibility design. The order of an epoch is a function of (seed, epoch) alone (``DistributedSampler``
semantics, also in one process), and the augmentation of a sample is a function of (seed, epoch, index): each
``__getitem__`` seeds a private copy of torch's RNG (:class:`EpochSeeded`). Neither depends on worker count,
on prefetching or on the model's use of the global RNG, so a run resumed at step ``s`` of epoch ``e`` only has
to skip the first ``s`` batches of that epoch's order to see exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from fastmtl.data import build_dataset, dataset_class, detect_kind, split_indices, subset
from fastmtl.engine.distributed import DistInfo
from fastmtl.engine.train.config import TrainConfig

__all__ = [
    "EpochSeeded",
    "ResumableSampler",
    "RunData",
    "build_run_data",
    "make_train_loader",
    "make_val_loader",
    "split_record",
]

_MIX = 0x9E3779B97F4A7C15  # 64-bit golden-ratio constant: spreads (seed, epoch, index) over the seed space


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample of one epoch."""
    value = (seed * _MIX + epoch) % (1 << 64)
    return ((value * _MIX + index) % (1 << 64)) >> 1


class EpochSeeded(Dataset):
    """Wraps a dataset so that sample ``i`` of epoch ``e`` draws its augmentation from ``sample_seed(seed, e, i)``.

    The global RNG of the calling process is left untouched (``fork_rng``), so data loading in the main process
    (``num_workers=0``) does not shift the model's random stream (drop path). Call :meth:`set_epoch` before
    creating each epoch's iterator; workers receive a fresh copy of the wrapper with the epoch set.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch, int(index)))
            return self.dataset[index]


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (per-epoch permutation seeded by seed + epoch) that can skip a prefix.

    Args:
        dataset: the training set.
        world: the process layout (one process is rank 0 of 1).
        seed: permutation seed.
        shuffle: permute each epoch.
    """

    def __init__(self, dataset: Dataset, world: DistInfo, seed: int, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=world.world_size, rank=world.rank, shuffle=shuffle, seed=seed)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Selects the epoch's order and skips its first ``skip`` samples (of this rank)."""
        super().set_epoch(epoch)
        self.skip = int(skip)

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self) -> int:
        return max(super().__len__() - self.skip, 0)


@dataclass
class RunData:
    """The resolved datasets of a run.

    Attributes:
        kind: dataset kind.
        train: training set (with augmentation).
        val: validation set (no augmentation).
        val_source: "dataset" (its own split) or "carve" (held out of the training split).
        class_names: classification class names.
        seg_classes: segmentation channels of the data (1 = binary).
        seg_class_names: foreground segmentation class names.
        full_train_size: training images before ``max_train_images`` (what a full run would train on).
        skipped: the bad cases ``skip_bad`` left out ({"id", "path", "problem", "detail"}).
        root: the data folder, absolute (None: generated data).
    """

    kind: str
    train: Any
    val: Any
    val_source: str
    class_names: tuple[str, ...]
    seg_classes: int
    seg_class_names: tuple[str, ...]
    full_train_size: int = 0
    skipped: list = field(default_factory=list)
    root: str | None = None


def _cache(config: TrainConfig) -> str | bool | None:
    if config.data.cache_dir == "off":
        return False
    return config.data.cache_dir or None


def build_run_data(config: TrainConfig, data_root: str | Path | None) -> RunData:
    """Builds the training set and a validation set that never touches the test split.

    Raises:
        FileNotFoundError: the data folder (or a file the dataset needs) is missing.
        ValueError: unknown kind or dataset options, or a split that comes out empty.
    """
    root = None if data_root is None else Path(data_root)
    kind = config.data.kind if config.data.kind != "auto" else detect_kind(root)
    common = {"img_size": config.model.img_size, "cache_dir": _cache(config), "normalize": config.data.normalize}
    options = dict(config.data.options)

    def build(split: str, train: bool):
        # the device input path stores the training images at store_size and resizes while it augments
        stored = train and config.data.input_pipeline == "device" and config.data.store_size
        size = config.data.store_size if stored else config.model.img_size
        try:
            return build_dataset(kind, root, split, train=train, **{**common, "img_size": size},
                                 **dict(options))  # fmt: skip
        except TypeError as e:  # an option the dataset's constructor does not take
            raise ValueError(f"data.options {options} do not fit the {kind} dataset: {e}") from e

    skipped: list[dict[str, str]] = []
    own = dataset_class(kind).own_val_split(root) if config.data.val_source != "carve" else None
    if config.data.val_source == "dataset" and own is None:
        raise ValueError(f"val_source='dataset' but the {kind} data at {root} has no validation split")
    if own is not None:
        train_set, val_set, source = build("train", True), build(own, False), "dataset"
        keep = _screened(train_set, config, root, skipped)
        train_set = train_set if keep is None else subset(train_set, keep)
        keep = _screened(val_set, config, root, skipped)
        val_set = val_set if keep is None else subset(val_set, keep)
    else:
        full_train, full_eval = build("train", True), build("train", False)
        keep = _screened(full_eval, config, root, skipped)
        if keep is not None:
            full_train, full_eval = subset(full_train, keep), subset(full_eval, keep)
        train_idx, val_idx = split_indices(full_eval, config.data.val_fraction, config.data.split_seed)
        train_set, val_set, source = subset(full_train, train_idx), subset(full_eval, val_idx), "carve"
    full_train_size = len(train_set)
    if config.data.max_train_images and config.data.max_train_images < len(train_set):
        train_set = subset(train_set, range(config.data.max_train_images))
    for name, ds in (("training", train_set), ("validation", val_set)):
        if len(ds) == 0:
            raise ValueError(f"the {name} split of the {kind} data at {root} is empty")
    names, seg_names = tuple(train_set.class_names), tuple(train_set.seg_class_names)
    seg_classes = int(train_set.seg_classes)
    where = None if root is None else str(root.resolve())
    return RunData(kind, train_set, val_set, source, names, seg_classes, seg_names, full_train_size, skipped, where)


def _screened(dataset, config: TrainConfig, root, skipped: list) -> list[int] | None:
    """The indices to keep after :func:`fastmtl.data.preflight.screen` (None: all are good). A bad case stops the
    run with one line, or with ``skip_bad`` is left out, printed and recorded in ``skipped``."""
    from fastmtl.data.preflight import describe, screen

    bad = screen(dataset)
    if not bad:
        return None
    if not config.data.skip_bad:
        raise ValueError(f"{len(bad)} bad case(s) in {root}: {describe(bad)}; `fastmtl check-data --data-root {root}` "
                         "lists every problem, --skip-bad leaves these cases out")  # fmt: skip
    for index, problem in bad.items():
        skipped.append({"id": dataset.ids[index], "path": problem.path, "problem": problem.problem,
                        "detail": problem.detail})  # fmt: skip
    print(f"fastmtl: left out {len(bad)} bad case(s) (--skip-bad): {describe(bad)}", file=sys.stderr)
    return [i for i in range(len(dataset)) if i not in bad]


def split_record(config: TrainConfig, data: RunData) -> dict[str, Any]:
    """Which cases a run trains and validates on (``split.json`` in the run folder), so a split can be audited
    and reproduced: the source of the validation split, the carve's seed and fraction, and the case ids."""
    record: dict[str, Any] = {"data_root": data.root, "kind": data.kind, "val_source": data.val_source}
    if data.val_source == "carve":
        record.update(split_seed=config.data.split_seed, val_fraction=config.data.val_fraction)
    if config.data.max_train_images:
        record.update(max_train_images=config.data.max_train_images, full_train_size=data.full_train_size)
    if data.skipped:
        record.update(skipped=data.skipped)
    record.update(train_ids=list(data.train.ids), val_ids=list(data.val.ids))
    return record


def split_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between a run folder's ``split.json`` and the data a resumed run found (empty: nothing): the
    data folder (when the saved record names one), the kind, the validation source and the case ids."""
    changes = []
    for key, what in (("data_root", "data folder"), ("kind", "data kind"), ("val_source", "validation source")):
        if key in saved and saved[key] != current.get(key):
            changes.append(f"{what} {current.get(key)} (the run's: {saved[key]})")
    for key, what in (("train_ids", "training"), ("val_ids", "validation")):
        old, new = set(saved.get(key, [])), set(current.get(key, []))
        if old != new:
            gone, added = sorted(old - new), sorted(new - old)
            example = (gone or added)[0]
            changes.append(f"{what} ids: {len(added)} added, {len(gone)} missing (e.g. {example})")
    return changes


def class_weights_for(data: RunData) -> torch.Tensor | None:
    """Inverse class frequency over the labelled training samples; None (with a warning) when undefined."""
    from fastmtl.losses import class_weights_from_labels

    labels = np.asarray(data.train.labels)[np.asarray(data.train.has_labels, dtype=bool)]
    try:
        return class_weights_from_labels(torch.as_tensor(labels))
    except ValueError as e:
        warnings.warn(f"classification loss left unweighted: {e}", stacklevel=2)
        return None


def make_train_loader(data: RunData, config: TrainConfig, world: DistInfo) -> DataLoader:
    """Training loader over :class:`EpochSeeded` samples with a :class:`ResumableSampler`."""
    dataset = EpochSeeded(data.train, config.optim.seed)
    sampler = ResumableSampler(dataset, world, config.optim.seed)
    return DataLoader(
        dataset,
        batch_size=config.optim.batch_size,
        sampler=sampler,
        num_workers=config.data.num_workers,
        drop_last=config.data.drop_last and len(sampler) >= config.optim.batch_size,
        pin_memory=world.device.type == "cuda",
        # A private generator: the loader's base-seed draw must not consume the global RNG (the model's stream).
        generator=torch.Generator().manual_seed(config.optim.seed),
    )


def make_val_loader(data: RunData, config: TrainConfig, world: DistInfo) -> DataLoader:
    """Validation loader over this rank's shard (``rank::world_size``, no padding, so nothing is counted twice)."""
    shard = subset(data.val, range(world.rank, len(data.val), world.world_size))
    return DataLoader(
        shard,
        batch_size=config.eval_batch_size,
        shuffle=False,
        num_workers=config.data.num_workers,
        pin_memory=world.device.type == "cuda",
        generator=torch.Generator().manual_seed(config.optim.seed),
    )
