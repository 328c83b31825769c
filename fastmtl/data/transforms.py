"""Joint image/mask augmentation (SPEC section 5) and pixel normalisation.

Training: horizontal flip with p=0.5, rotation by an angle uniform in +-25 degrees with p=0.5 (image
bilinear, mask nearest, zero fill), then resize to ``img_size``; evaluation: resize only. Everything runs on
uint8 tensors through ``torchvision.transforms.v2.functional`` with ``tv_tensors.Image`` / ``tv_tensors.Mask``
so that masks are always resampled with nearest neighbour and keep their class values. Normalisation to
float32 happens last.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZE_MODES",
    "PairTransform",
    "build_transforms",
    "denormalize",
    "normalize_image",
    "to_hw",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZE_MODES = ("imagenet", "raw", "unit")


def to_hw(size: int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    """Turns an int or (h, w) into (h, w); None stays None (keep the source size)."""
    if size is None:
        return None
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"img_size must be positive, got {size}")
        return (size, size)
    height, width = (int(v) for v in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"img_size must be positive, got {tuple(size)}")
    return (height, width)


def _stats(mode: str, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std in 0..255 units for ``mode``."""
    if mode == "imagenet":
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        if channels == 1:  # greyscale input: the ImageNet statistics averaged over RGB
            mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
        return mean * 255.0, std * 255.0
    if mode == "raw":
        return torch.zeros(channels), torch.ones(channels)
    if mode == "unit":
        return torch.zeros(channels), torch.full((channels,), 255.0)
    raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {mode!r}")


def normalize_image(image: torch.Tensor, mode: str = "imagenet") -> torch.Tensor:
    """Converts uint8 (C, H, W) to float32 (C, H, W).

    Args:
        image: uint8 (C, H, W) or (B, C, H, W).
        mode: "imagenet" (mean/std), "raw" (0..255 floats, as the authors fed the network) or "unit" (/255).
    """
    mean, std = _stats(mode, image.shape[-3])
    return (image.float() - mean[:, None, None]) / std[:, None, None]


def denormalize(image: torch.Tensor, mode: str = "imagenet") -> torch.Tensor:
    """Inverse of :func:`normalize_image`: float (..., C, H, W) back to uint8 for display."""
    mean, std = _stats(mode, image.shape[-3])
    pixels = image.float() * std[:, None, None].to(image.device) + mean[:, None, None].to(image.device)
    return pixels.round().clamp(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class PairTransform:
    """Applies the same geometric augmentation to an image and its mask.

    Attributes:
        img_size: output (h, w); None keeps the input size.
        train: augment (flip, rotation) before resizing; False resizes only.
        hflip_p: probability of a horizontal flip.
        rotate_p: probability of a rotation.
        degrees: rotation angles are uniform in [-degrees, degrees].
    """

    img_size: tuple[int, int] | None
    train: bool
    hflip_p: float = 0.5
    rotate_p: float = 0.5
    degrees: float = 25.0

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Transforms a pair.

        Args:
            image: uint8 (C, H, W).
            mask: integer (H, W) class indices.
            generator: random source; None uses torch's global generator (seeded per DataLoader worker).

        Returns:
            (image uint8 (C, h, w), mask (h, w) with the input dtype), spatially aligned.
        """
        img, msk = tv_tensors.Image(image), tv_tensors.Mask(mask)
        if self.train:
            draws = torch.rand(3, generator=generator)
            if draws[0] < self.hflip_p:
                img, msk = F.horizontal_flip(img), F.horizontal_flip(msk)
            if draws[1] < self.rotate_p:
                angle = float((draws[2] * 2.0 - 1.0) * self.degrees)
                img = F.rotate(img, angle, interpolation=InterpolationMode.BILINEAR, fill=0)
                msk = F.rotate(msk, angle, fill=0)  # Mask kernels always use nearest
        if self.img_size is not None and tuple(img.shape[-2:]) != self.img_size:
            img = F.resize(img, list(self.img_size), interpolation=InterpolationMode.BILINEAR, antialias=True)
            msk = F.resize(msk, list(self.img_size))
        return img.as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor)


def build_transforms(img_size: int | tuple[int, int] | None, train: bool, **options: float) -> PairTransform:
    """The SPEC section 5 pipeline: augmentation when ``train``, then resize to ``img_size``.

    Args:
        img_size: output size (int for square or (h, w)); None keeps the source size.
        train: augment or not.
        **options: overrides of ``hflip_p``, ``rotate_p`` and ``degrees``.
    """
    return PairTransform(to_hw(img_size), train, **options)
