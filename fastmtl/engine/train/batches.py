"""Where a run's batches come from: one :class:`Batches` protocol, two implementations, chosen once per run.

- :class:`LoaderBatches` (``data.input_pipeline = "loader"``): DataLoader workers decode and augment per sample
  (:mod:`fastmtl.engine.train.loaders`); each batch is moved to the device as it arrives.
- :class:`DeviceBatches` (``"device"``): the training and validation splits are decoded once into uint8 tensors on
  the training device and augmented there in batches (:mod:`fastmtl.engine.train.device_loader`).

Both give an epoch's batches on the device from a step on (a resumed run skips the steps it did), in the same order
with the same augmentation draws, and validate on their own validation split with the same metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from torch.utils.data import DataLoader

from fastmtl.engine.distributed import DistInfo
from fastmtl.engine.train.config import TrainConfig
from fastmtl.engine.train.device_loader import DeviceSplit, DeviceTrainLoader, decode_split
from fastmtl.engine.train.device_step import evaluate_split
from fastmtl.engine.train.loaders import RunData, make_train_loader, make_val_loader
from fastmtl.engine.train.loop import StepContext, validate
from fastmtl.runtime import batch_to_device

__all__ = ["Batches", "DeviceBatches", "LoaderBatches", "build_batches"]


class Batches(Protocol):
    """A run's training batches and validation split."""

    steps: int  # optimizer steps per epoch (after ``optim.max_steps_per_epoch``)
    val_images: int  # images in this rank's validation split

    def epoch(self, epoch: int, skip: int) -> Iterable[dict[str, Any]]:
        """The batches of ``epoch`` on the device, from its batch ``skip`` on."""
        ...

    def validate(self, ctx: StepContext) -> dict[str, Any]:
        """Validation loss and metrics of ``ctx.raw_model``, reduced over ranks."""
        ...


class LoaderBatches:
    """DataLoader batches (see the module docstring)."""

    def __init__(self, config: TrainConfig, data: RunData, world: DistInfo) -> None:
        self.config, self.data, self.device = config, data, world.device
        self.train, self.val = make_train_loader(data, config, world), make_val_loader(data, config, world)
        self.train.sampler.set_epoch(0, 0)
        cap = config.optim.max_steps_per_epoch
        self.steps = min(len(self.train), cap) if cap else len(self.train)
        self.val_images = len(self.val.dataset)

    def epoch(self, epoch: int, skip: int) -> Iterator[dict[str, Any]]:
        self.train.dataset.set_epoch(epoch)
        self.train.sampler.set_epoch(epoch, skip * self.train.batch_size)
        return self._moved(self.train)

    def _moved(self, loader: DataLoader) -> Iterator[dict[str, Any]]:
        for batch in loader:
            yield batch_to_device(batch, self.device, self.config.run.channels_last)

    def validate(self, ctx: StepContext) -> dict[str, Any]:
        data = self.data
        return validate(ctx, self.val, data.class_names, data.seg_classes, self.config.run.max_val_steps,
                        data.seg_class_names)  # fmt: skip


class DeviceBatches:
    """Device-resident batches (see the module docstring)."""

    def __init__(self, config: TrainConfig, data: RunData, world: DistInfo) -> None:
        self.config, self.data = config, data
        transform = data.train.transform  # the dataset's PairTransform: the same augmentation settings
        augment = {"hflip_p": transform.hflip_p, "rotate_p": transform.rotate_p, "degrees": transform.degrees}
        side = config.model.img_size
        self.train = DeviceTrainLoader(
            decode_split(data.train, world.device, config.data.num_workers), batch_size=config.optim.batch_size,
            seed=config.optim.seed, world=world, img_size=(side, side), normalize=config.data.normalize,
            augment=augment, drop_last=config.data.drop_last, channels_last=config.run.channels_last,
        )  # fmt: skip
        self.val: DeviceSplit = decode_split(data.val, world.device, config.data.num_workers)
        full = self.train.full_batches()
        self.steps = min(full, config.optim.max_steps_per_epoch or full)
        self.val_images = len(self.val)

    def epoch(self, epoch: int, skip: int) -> DeviceTrainLoader:
        self.train.set_epoch(epoch, skip)
        return self.train

    def validate(self, ctx: StepContext) -> dict[str, Any]:
        config, data = self.config, self.data
        return evaluate_split(ctx.raw_model, self.val, ctx=ctx, img_size=(config.model.img_size,) * 2,
                              normalize=config.data.normalize, batch_size=config.eval_batch_size,
                              class_names=data.class_names, seg_classes=data.seg_classes,
                              seg_class_names=data.seg_class_names, max_steps=config.run.max_val_steps)  # fmt: skip


def build_batches(config: TrainConfig, data: RunData, world: DistInfo) -> Batches:
    """The run's batches, by ``data.input_pipeline``."""
    return (DeviceBatches if config.data.input_pipeline == "device" else LoaderBatches)(config, data, world)
