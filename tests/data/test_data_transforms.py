"""Joint transforms keep image and mask aligned and masks inside their label set; normalisation modes."""

from __future__ import annotations

import pytest
import torch

from fastmtl.data.transforms import PairTransform, build_transforms, denormalize, normalize_image, to_hw


def _asymmetric_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose red channel marks exactly the mask's foreground, placed off-centre (left side)."""
    mask = torch.zeros(32, 48, dtype=torch.uint8)
    mask[8:20, 4:16] = 2
    mask[22:28, 6:10] = 3
    image = torch.zeros(3, 32, 48, dtype=torch.uint8)
    image[0] = (mask > 0).to(torch.uint8) * 255
    image[1] = torch.arange(48, dtype=torch.uint8)[None, :] * 5  # horizontal ramp: reveals flips
    return image, mask


def test_flip_moves_image_and_mask_together():
    image, mask = _asymmetric_pair()
    flip_only = PairTransform(None, True, hflip_p=1.0, rotate_p=0.0)
    out_image, out_mask = flip_only(image, mask)
    assert torch.equal(out_mask, mask.flip(-1)) and torch.equal(out_image, image.flip(-1))
    assert torch.equal(out_image[0] > 0, out_mask > 0)


@pytest.mark.parametrize("seed", range(6))
def test_random_train_transform_keeps_labels_and_alignment(seed):
    image, mask = _asymmetric_pair()
    transform = build_transforms((40, 40), train=True, rotate_p=1.0)
    out_image, out_mask = transform(image, mask, generator=torch.Generator().manual_seed(seed))
    assert out_image.shape == (3, 40, 40) and out_image.dtype == torch.uint8
    assert out_mask.shape == (40, 40) and set(out_mask.unique().tolist()) <= {0, 2, 3}
    red = out_image[0].float() / 255.0
    inside, outside = red[out_mask > 0], red[out_mask == 0]
    assert inside.mean() > 0.8 and outside.mean() < 0.1  # the mask still covers the red region


def test_generator_makes_it_deterministic_and_eval_only_resizes():
    image, mask = _asymmetric_pair()
    transform = build_transforms(24, train=True)
    first = transform(image, mask, generator=torch.Generator().manual_seed(3))
    second = transform(image, mask, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    eval_image, eval_mask = build_transforms(24, train=False)(image, mask)
    assert eval_image.shape == (3, 24, 24) and set(eval_mask.unique().tolist()) <= {0, 2, 3}
    same_image, same_mask = build_transforms(None, train=False)(image, mask)
    assert torch.equal(same_image, image) and torch.equal(same_mask, mask)


def test_rotation_angles_stay_within_25_degrees():
    image, mask = _asymmetric_pair()
    transform = PairTransform(None, True, hflip_p=0.0, rotate_p=1.0, degrees=25.0)
    changed = 0
    for seed in range(8):
        _, out_mask = transform(image, mask, generator=torch.Generator().manual_seed(seed))
        changed += int(not torch.equal(out_mask, mask))
        # a rotation of at most 25 degrees about the centre keeps the big square's centre in the left half
        ys, xs = torch.nonzero(out_mask == 2, as_tuple=True)
        assert xs.float().mean() < 24
    assert changed >= 6


def test_normalize_modes_and_inverse():
    image = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    raw, unit = normalize_image(image, "raw"), normalize_image(image, "unit")
    assert raw.dtype == torch.float32 and torch.equal(raw, image.float())
    assert torch.allclose(unit, image.float() / 255)
    net = normalize_image(image, "imagenet")
    assert torch.equal(denormalize(net, "imagenet"), image)
    assert normalize_image(image[:1], "imagenet").shape == (1, 5, 7)
    with pytest.raises(ValueError, match="normalize must be one of"):
        normalize_image(image, "zscore")
    assert to_hw(8) == (8, 8) and to_hw([4, 6]) == (4, 6) and to_hw(None) is None
    with pytest.raises(ValueError, match="positive"):
        to_hw(0)
