"""Device-resident input path: a split decoded once into uint8 tensors on the training device, augmented there.

The DataLoader path decodes (through the on-disk cache), augments and normalises every sample in Python per
step. Here a split is decoded once into one uint8 tensor ``(N, C, S, S)`` with its masks ``(N, S, S)`` and
labels, kept on the device (CUDA or CPU). A training batch is a gather of its indices, one
``affine_grid`` / ``grid_sample`` for the images (bilinear, zero fill) and one for the masks (nearest) that
flips, rotates and resizes ``S -> img_size`` in a single resampling, then the normalisation as one
multiply-add. No host work per sample, no host round trip per step: the epoch's order and augmentation
parameters go to the device once per epoch.

Same semantics as the DataLoader path (:mod:`fastmtl.engine.train.loaders`):

- the order of epoch ``e`` is :class:`~fastmtl.engine.train.loaders.ResumableSampler`'s (seed + epoch permutation,
  per-rank shard) and batches drop the last incomplete one under the same rule;
- sample ``i`` of epoch ``e`` draws its flip / rotation from ``sample_seed(seed, e, i)`` exactly as the
  DataLoader path does (three uniforms: flip, rotate, angle), so both paths apply the same augmentation
  parameters to the same sample; only the resampling differs (one bilinear warp here, versus a rotation on
  uint8 followed by a resize there);
- a resumed run skips the first ``s`` batches of the epoch and sees exactly the batches an uninterrupted
  run sees.

Greyscale sources for ``in_chans=1`` are converted to luminance before the warp (the DataLoader path
converts after it; the two commute up to uint8 rounding).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fastmtl.data.transforms import _stats
from fastmtl.engine.train.loaders import ResumableSampler, sample_seed

__all__ = ["DeviceSplit", "DeviceTrainLoader", "augment_batch", "decode_split", "eval_batches", "warp_matrices"]

_LUMA = (0.299, 0.587, 0.114)


@dataclass
class DeviceSplit:
    """One split as device tensors.

    Attributes:
        images: uint8 (N, C, S, S').
        masks: uint8 (N, S, S') class indices (zeros where there is no mask).
        has_mask: bool (N,).
        labels: float32 (N, K).
        has_label: bool (N,).
        ids: sample ids.
    """

    images: torch.Tensor
    masks: torch.Tensor
    has_mask: torch.Tensor
    labels: torch.Tensor
    has_label: torch.Tensor
    ids: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str) -> DeviceSplit:
        """The same split on ``device``."""
        t = [x.to(device) for x in (self.images, self.masks, self.has_mask, self.labels, self.has_label)]
        return DeviceSplit(*t, ids=self.ids)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.images, self.masks, self.labels))


def _base(dataset: Any, index: int) -> tuple[Any, int]:
    """The file-backed dataset and its own index behind a (possibly nested) subset view."""
    while hasattr(dataset, "indices") and hasattr(dataset, "dataset"):
        dataset, index = dataset.dataset, int(dataset.indices[index])
    return dataset, index


def _uint8_sample(dataset: Any, index: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(image uint8 (C, h, w), mask uint8 (h, w) or None) of one sample before augmentation."""
    base, i = _base(dataset, index)
    arrays = base._load(i)  # decoded and resized to the dataset's img_size through its cache
    image = np.asarray(arrays["image"])
    image = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
    in_chans = getattr(base, "in_chans", 3)
    if image.shape[0] == 1 and in_chans == 3:
        image = np.repeat(image, 3, axis=0)
    elif image.shape[0] == 3 and in_chans == 1:
        luma = np.asarray(_LUMA, dtype=np.float32)[:, None, None]
        image = np.rint((image.astype(np.float32) * luma).sum(0, keepdims=True)).astype(np.uint8)
    mask = arrays.get("mask")
    return np.require(image, requirements=["C", "W"]), None if mask is None else np.require(mask, np.uint8, ["C", "W"])


def decode_split(dataset: Any, device: torch.device | str, workers: int = 0) -> DeviceSplit:
    """Decodes every sample of ``dataset`` (a fastmtl dataset or a subset of one) into device tensors.

    Args:
        dataset: an :class:`~fastmtl.data.base.MTLDataset` (or :func:`~fastmtl.data.subset` of one) with a fixed
            ``img_size``: that is the stored size.
        device: where the tensors live.
        workers: decoding threads (0 = up to 8, by CPU count); JPEG / PNG decoding releases the GIL.

    Raises:
        ValueError: the dataset has no fixed size, or a sample's image or mask has another size (named by id).
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot decode an empty split onto the device")
    size = getattr(dataset, "img_size", None)
    if size is None:
        raise ValueError("the device input path needs a fixed img_size (the dataset keeps source sizes)")
    ids = list(dataset.ids)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        samples = list(pool.map(lambda i: _uint8_sample(dataset, i), range(n)))
    channels = samples[0][0].shape[0]
    images = torch.empty((n, channels, *size), dtype=torch.uint8)
    masks = torch.zeros((n, *size), dtype=torch.uint8)
    for i, (image, mask) in enumerate(samples):
        if image.shape != (channels, *size) or (mask is not None and mask.shape != tuple(size)):
            got = image.shape if mask is None else (image.shape, mask.shape)
            raise ValueError(f"sample {ids[i]} decodes to {got}, expected ({channels}, {size[0]}, {size[1]})")
        images[i] = torch.from_numpy(image)
        if mask is not None:
            masks[i] = torch.from_numpy(mask)
    device = torch.device(device)
    return DeviceSplit(
        images=images.to(device),
        masks=masks.to(device),
        has_mask=torch.as_tensor(np.asarray(dataset.has_masks, dtype=bool)).to(device),
        labels=torch.as_tensor(np.asarray(dataset.labels, dtype=np.float32)).to(device),
        has_label=torch.as_tensor(np.asarray(dataset.has_labels, dtype=bool)).to(device),
        ids=ids,
    )


def warp_matrices(
    draws: torch.Tensor, hflip_p: float, rotate_p: float, degrees: float, src_hw: tuple[int, int]
) -> torch.Tensor:
    """``affine_grid`` matrices (B, 2, 3) from the DataLoader path's three uniforms per sample.

    ``draws[:, 0] < hflip_p`` flips horizontally, ``draws[:, 1] < rotate_p`` rotates by
    ``(2 * draws[:, 2] - 1) * degrees`` degrees counter-clockwise about the centre (torchvision's convention),
    the flip first, as in :class:`~fastmtl.data.transforms.PairTransform`. The output keeps the source's extent,
    so sampling it at another size is a resize.
    """
    flip = torch.where(draws[:, 0] < hflip_p, -1.0, 1.0).to(torch.float64)  # (B,)
    angle = torch.where(draws[:, 1] < rotate_p, (draws[:, 2].double() * 2.0 - 1.0) * degrees, 0.0)
    rad = angle * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    h, w = src_hw
    # In source pixel units (y down) the output pixel p comes from flip(R(-angle) p); normalised coordinates
    # scale x by 2/w and y by 2/h, hence the aspect factors on the off-diagonal terms.
    theta = torch.zeros(draws.shape[0], 2, 3, dtype=torch.float64, device=draws.device)
    theta[:, 0, 0] = flip * cos
    theta[:, 0, 1] = -flip * sin * (h / w)
    theta[:, 1, 0] = sin * (w / h)
    theta[:, 1, 1] = cos
    return theta.float()


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    theta: torch.Tensor | None,
    out_hw: tuple[int, int],
    mean: torch.Tensor,
    inv_std: torch.Tensor,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warps and normalises one batch on its device.

    Args:
        images: uint8 (B, C, S, S').
        masks: uint8 (B, S, S').
        theta: (B, 2, 3) from :func:`warp_matrices`; None resizes only (no augmentation).
        out_hw: output (h, w).
        mean: (C,) in 0..255 units; inv_std: (C,) reciprocal standard deviations.
        channels_last: return the images in channels-last memory format.

    Returns:
        (float32 (B, C, h, w) normalised images, int64 (B, h, w) masks).
    """
    b, c = images.shape[:2]
    pixels = images.float()
    if theta is None and tuple(images.shape[-2:]) == tuple(out_hw):
        warped, warped_mask = pixels, masks.long()
    else:
        if theta is None:
            theta = torch.eye(2, 3, device=images.device).expand(b, 2, 3)
        grid = F.affine_grid(theta.to(pixels.device), [b, c, *out_hw], align_corners=False)  # (B, h, w, 2)
        warped = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        warped_mask = F.grid_sample(masks[:, None].float(), grid, mode="nearest", align_corners=False)[:, 0].long()
    if channels_last:
        warped = warped.contiguous(memory_format=torch.channels_last)
    # (x - mean) / std as one multiply-add; the zero fill of the warp is black, as in the DataLoader path
    out = torch.addcmul((-mean * inv_std)[:, None, None], warped, inv_std[:, None, None])
    return out, warped_mask


def _norm_stats(normalize: str, channels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = _stats(normalize, channels)
    return mean.to(device), (1.0 / std).to(device)


class DeviceTrainLoader:
    """Training batches from a :class:`DeviceSplit`, with the DataLoader path's order and augmentation draws.

    Iterating yields sample dicts like the DataLoader path's collated batches (without ``id`` / ``orig_size``):
    ``image`` float32 (B, C, h, w), ``mask`` int64 (B, h, w), ``has_mask`` (B,), ``label`` (B, K),
    ``has_label`` (B,), all on the split's device.

    Args:
        split: the decoded training split.
        batch_size: images per step.
        seed: the run seed (order and augmentation).
        world: the process layout (rank / world size), as for the sampler.
        img_size: output (h, w).
        normalize: "imagenet", "raw" or "unit".
        augment: ``hflip_p``, ``rotate_p``, ``degrees`` (the dataset's :class:`PairTransform` values).
        drop_last: drop the last incomplete batch (when at least one full batch exists).
        channels_last: emit channels-last images.
    """

    def __init__(
        self,
        split: DeviceSplit,
        *,
        batch_size: int,
        seed: int,
        world: Any,
        img_size: tuple[int, int],
        normalize: str,
        augment: dict[str, float],
        drop_last: bool = True,
        channels_last: bool = False,
    ) -> None:
        self.split, self.batch_size, self.seed = split, int(batch_size), int(seed)
        self.img_size, self.channels_last = tuple(img_size), channels_last
        self.hflip_p, self.rotate_p, self.degrees = augment["hflip_p"], augment["rotate_p"], augment["degrees"]
        self.world = world
        self.per_rank = len(ResumableSampler(range(len(split)), world, self.seed))  # samples per rank and epoch
        self.drop_last = drop_last and self.per_rank >= self.batch_size
        device = split.images.device
        self.mean, self.inv_std = _norm_stats(normalize, split.images.shape[1], device)
        self.epoch, self.skip = 0, 0
        self._pending: dict[int, Future] = {}

    @property
    def device(self) -> torch.device:
        return self.split.images.device

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Selects ``epoch``'s order and skips its first ``skip_batches`` batches."""
        self.epoch, self.skip = int(epoch), int(skip_batches)

    def full_batches(self) -> int:
        """Batches in a full epoch (no skip)."""
        n = self.per_rank
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        return max(self.full_batches() - self.skip, 0)

    def _plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(this rank's order of ``epoch`` (M,) int64, draws (M, 3)) on the CPU, pinned where that helps."""
        sampler = ResumableSampler(range(len(self.split)), self.world, self.seed)  # its own: this may run in a thread
        sampler.set_epoch(epoch, 0)
        order = list(sampler)
        draws = torch.empty(len(order), 3)
        for row, index in enumerate(order):  # the DataLoader path's per-sample stream, draw for draw
            generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
            draws[row] = torch.rand(3, generator=generator)
        order_t = torch.tensor(order, dtype=torch.int64)
        if self.device.type == "cuda":
            order_t, draws = order_t.pin_memory(), draws.pin_memory()
        return order_t, draws

    def _planned(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        future = self._pending.pop(epoch, None)
        order, draws = future.result() if future is not None else self._plan(epoch)
        pool = ThreadPoolExecutor(max_workers=1)  # plans the next epoch in the background, then its thread ends
        self._pending = {epoch + 1: pool.submit(self._plan, epoch + 1)}
        pool.shutdown(wait=False)
        return order, draws

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order, draws = self._planned(self.epoch)
        device = self.device
        order = order.to(device, non_blocking=True)
        theta_all = warp_matrices(draws, self.hflip_p, self.rotate_p, self.degrees, self.split.images.shape[-2:])
        theta_all = theta_all.to(device, non_blocking=True)
        for step in range(self.skip, self.full_batches()):
            rows = slice(step * self.batch_size, (step + 1) * self.batch_size)
            yield self._batch(order[rows], theta_all[rows])

    def _batch(self, index: torch.Tensor, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.split
        image, mask = augment_batch(s.images[index], s.masks[index], theta, self.img_size, self.mean, self.inv_std,
                                    self.channels_last)  # fmt: skip
        return {"image": image, "mask": mask, "has_mask": s.has_mask[index], "label": s.labels[index],
                "has_label": s.has_label[index]}  # fmt: skip


def eval_batches(
    split: DeviceSplit,
    batch_size: int,
    img_size: tuple[int, int],
    normalize: str,
    channels_last: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[dict[str, torch.Tensor]]:
    """Evaluation batches (resize only) of ``split`` as device sample dicts; ``shard = (rank, world_size)`` takes
    rows ``rank::world_size`` (no padding, so nothing is counted twice)."""
    mean, inv_std = _norm_stats(normalize, split.images.shape[1], split.images.device)
    rank, world = shard
    n = len(range(rank, len(split), world))
    for start in range(0, n, batch_size):
        index = slice(rank + start * world, rank + min(start + batch_size, n) * world, world)
        image, mask = augment_batch(split.images[index], split.masks[index], None, img_size, mean, inv_std,
                                    channels_last)  # fmt: skip
        yield {"image": image, "mask": mask, "has_mask": split.has_mask[index], "label": split.labels[index],
               "has_label": split.has_label[index]}  # fmt: skip
