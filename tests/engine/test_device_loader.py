"""The device-resident input path against the DataLoader path: same order, same augmentation draws, same warp
(up to resampling), exact resume, sharded evaluation batches and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from fastmtl.data import build_dataset, subset
from fastmtl.data.transforms import denormalize
from fastmtl.engine.distributed import DistInfo
from fastmtl.engine.train.config import config_from_dict
from fastmtl.engine.train.device_loader import (
    DeviceTrainLoader,
    augment_batch,
    decode_split,
    eval_batches,
    warp_matrices,
)
from fastmtl.engine.train.loaders import EpochSeeded, ResumableSampler


def _blob(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An off-centre elliptic lesion (uint8 3-channel image and 0/1 mask): flips and rotations move it."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = ((yy - size * 0.3) ** 2 / (size * 0.17) ** 2 + (xx - size * 0.62) ** 2 / (size * 0.1) ** 2 < 1).to(
        torch.uint8
    )
    image = torch.stack([mask * 180 + 30, mask * 90 + 60, (xx * 255 // size).to(torch.uint8)]).to(torch.uint8)
    return image, mask


@pytest.mark.parametrize(("flip", "angle"), [(False, 20.0), (True, 20.0), (True, -13.5), (False, 0.0)])
def test_warp_equals_torchvision_flip_then_rotate(flip, angle):
    image, mask = _blob(48)
    img, msk = tv_tensors.Image(image), tv_tensors.Mask(mask)
    if flip:
        img, msk = TF.horizontal_flip(img), TF.horizontal_flip(msk)
    msk = TF.rotate(msk, angle, fill=0)
    img = TF.rotate(img, angle, interpolation=InterpolationMode.BILINEAR, fill=0)
    draws = torch.tensor([[0.1 if flip else 0.9, 0.1 if angle else 0.9, (angle / 25.0 + 1.0) / 2.0]])
    theta = warp_matrices(draws, 0.5, 0.5, 25.0, (48, 48))
    out, out_mask = augment_batch(image[None], mask[None], theta, (48, 48), torch.zeros(3), torch.ones(3))
    assert torch.equal(out_mask[0], msk.as_subclass(torch.Tensor).long())  # nearest: the same pixels
    # bilinear on floats here, on uint8 there: most pixels agree to rounding; the lesion's hard edge and the fill
    # boundary differ by sub-pixel sampling positions
    diff = (out[0] - img.as_subclass(torch.Tensor).float()).abs()
    assert diff.mean() < 2.0 and (diff <= 2.0).float().mean() > 0.95


def test_warp_resizes_with_the_same_extent():
    image, mask = _blob(64)
    out, out_mask = augment_batch(image[None], mask[None], None, (32, 32), torch.zeros(3), torch.ones(3))
    assert out.shape == (1, 3, 32, 32) and out_mask.shape == (1, 32, 32)
    small = TF.resize(tv_tensors.Mask(mask), [32, 32]).as_subclass(torch.Tensor).long()
    assert (out_mask[0] != small).float().mean() < 0.02  # nearest sampling at pixel centres vs torchvision's


def _synthetic(n: int = 12, size: int = 32):
    return build_dataset("synthetic", None, "train", img_size=size, train=True, n=n, normalize="unit")


def _loader(ds, world=None, **kw) -> DeviceTrainLoader:
    split = decode_split(ds, "cpu", 2)
    t = ds.transform
    augment = {"hflip_p": t.hflip_p, "rotate_p": t.rotate_p, "degrees": t.degrees}
    args = {"batch_size": 4, "seed": 7, "world": world or DistInfo(), "img_size": tuple(ds.img_size),
            "normalize": ds.normalize, "augment": augment}  # fmt: skip
    return DeviceTrainLoader(split, **{**args, **kw})


def test_same_order_draws_and_warp_as_the_dataloader_path():
    """Every sample of two epochs: the device batch equals the DataLoader path's sample (same index, same flip and
    angle), masks up to a few edge pixels (rotation on uint8 vs one warp), images to rounding."""
    ds = _synthetic()
    loader = _loader(ds)
    seeded, sampler = EpochSeeded(ds, 7), ResumableSampler(ds, DistInfo(), 7)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        seeded.set_epoch(epoch)
        sampler.set_epoch(epoch)
        order = list(sampler)
        batches = list(loader)
        assert len(batches) == len(ds) // 4
        for b, batch in enumerate(batches):
            for j in range(4):
                ref = seeded[order[b * 4 + j]]
                assert torch.equal(batch["label"][j], ref["label"])
                assert (batch["mask"][j] != ref["mask"]).float().mean() < 0.03
                diff = (batch["image"][j] - ref["image"]).abs() * 255  # in grey levels
                # the same flip and angle: to rounding, except along the zero fill's border, which torchvision
                # blends twice (its fill mask is resampled too)
                assert diff.median() < 1.0 and (diff < 2.0).float().mean() > 0.85 and diff.mean() < 4.0


def test_augmentation_statistics_follow_the_paper():
    """Over 40 epochs of 12 samples: flips and rotations each about half the time, angles uniform in +-25."""
    ds = _synthetic()
    loader = _loader(ds)
    draws = torch.cat([loader._plan(epoch)[1] for epoch in range(40)])  # (480, 3)
    theta = warp_matrices(draws, 0.5, 0.5, 25.0, (32, 32))
    flipped = theta[:, 0, 0] * theta[:, 1, 1] - theta[:, 0, 1] * theta[:, 1, 0] < 0  # det -1: a reflection
    angles = torch.rad2deg(torch.atan2(theta[:, 1, 0], theta[:, 1, 1]))
    rotated = angles.abs() > 1e-4
    assert abs(flipped.float().mean() - 0.5) < 0.08 and abs(rotated.float().mean() - 0.5) < 0.08
    assert angles.abs().max() <= 25.0 + 1e-4 and abs(angles[rotated].mean()) < 3.0
    assert abs(angles[rotated].abs().mean() - 12.5) < 2.0  # |U(-25, 25)| has mean 12.5


def test_resume_skips_exactly_the_batches_already_seen():
    loader = _loader(_synthetic())
    loader.set_epoch(3)
    full = list(loader)
    loader.set_epoch(3, skip_batches=2)
    assert len(loader) == len(full) - 2
    rest = list(loader)
    for a, b in zip(full[2:], rest, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_ranks_share_an_epoch_without_overlap_and_drop_last_follows_the_loader_rule():
    ds = _synthetic(n=10)
    ranks = [_loader(ds, DistInfo(rank=r, world_size=2), batch_size=2, drop_last=False) for r in (0, 1)]
    labels = [torch.cat([b["label"] for b in loader]) for loader in ranks]
    assert [len(x) for x in labels] == [5, 5]  # 10 samples, 2 ranks, no padding needed
    assert ranks[0].full_batches() == 3  # 5 samples per rank in batches of 2, last one kept
    assert _loader(ds, batch_size=4).full_batches() == 2  # drop_last: 10 // 4


def test_eval_batches_cover_each_row_once_per_shard():
    ds = build_dataset("synthetic", None, "val", img_size=32, train=False, n=7, normalize="imagenet")
    split = decode_split(ds, "cpu", 1)
    seen = [
        torch.cat([b["label"] for b in eval_batches(split, 2, (32, 32), "imagenet", shard=(r, 3))]) for r in range(3)
    ]
    assert [len(x) for x in seen] == [3, 2, 2]
    first = next(eval_batches(split, 7, (32, 32), "imagenet"))
    assert torch.equal(first["mask"], torch.stack([ds[i]["mask"] for i in range(7)]))
    assert torch.allclose(first["image"], torch.stack([ds[i]["image"] for i in range(7)]), atol=1e-5)
    assert torch.equal(denormalize(first["image"][0]), split.images[0])


def test_decode_split_follows_subsets_and_limits(tmp_path):
    ds = _synthetic(n=8)
    part = subset(subset(ds, [1, 3, 5, 7]), [2, 0])  # nested views, as a carved split limited by max_train_images
    split = decode_split(part, "cpu", 1)
    assert split.ids == [ds.ids[5], ds.ids[1]] and torch.equal(split.labels, torch.as_tensor(ds.labels[[5, 1]]))
    assert split.nbytes == 2 * (3 * 32 * 32 + 32 * 32) + 2 * 3 * 4


def test_decode_split_rejects_sizes_it_cannot_stack():
    class Uneven:
        img_size, ids, labels = (8, 8), ["a", "b"], np.zeros((2, 1), np.float32)
        has_masks, has_labels = np.ones(2, bool), np.ones(2, bool)

        def __len__(self):
            return 2

        def _load(self, i):
            side = 8 if i == 0 else 9
            return {"image": np.zeros((side, side, 3), np.uint8), "mask": np.zeros((side, side), np.uint8)}

    with pytest.raises(ValueError, match="sample b decodes to"):
        decode_split(Uneven(), "cpu", 1)
    Uneven.img_size = None
    with pytest.raises(ValueError, match="fixed img_size"):
        decode_split(Uneven(), "cpu", 1)


def test_store_size_is_checked_against_img_size():
    with pytest.raises(ValueError, match="data.store_size=16 is smaller than model.img_size=32"):
        config_from_dict({"img_size": 32, "store_size": 16})
    assert config_from_dict({"img_size": 32, "store_size": 48}).data.store_size == 48
