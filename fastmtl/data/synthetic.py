"""Deterministic synthetic dermoscopy-like images: the embedded default dataset when no data is given.

Each sample is a lesion (a blob with a wavy border) on a skin-coloured, shaded background, with its mask
and one of three mutually exclusive synthetic classes, one-hot like ISIC's labels. The styles borrow from
dermoscopy, but the classes are made up and named so (a model trained on them must not claim a diagnosis):

- synthetic_irregular: large, dark, irregular border, mottled brown / blue-grey colours (melanoma-like);
- synthetic_speckled: light tan, moderately irregular, bright speckles (seborrheic-keratosis-like);
- synthetic_regular: small to medium, regular round border, uniform mid brown (nevus-like).

Sizes, positions, colours and textures are jittered so the classes overlap a little. Sample ``i`` of a
given seed and split is always the same image, at any ``img_size`` (drawn in normalised coordinates).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastmtl.data.base import MTLDataset

__all__ = ["SYNTHETIC_CLASSES", "SyntheticLesions", "render_lesion"]

SYNTHETIC_CLASSES = ("synthetic_irregular", "synthetic_speckled", "synthetic_regular")
_CLASS_P = (0.3, 0.2, 0.5)  # irregular, speckled, regular
_SPLIT_CODES = {"train": 0, "all": 0, "val": 1, "test": 2}
# per class: (radius range, border irregularity range, base colour RGB)
_STYLE = {
    0: ((0.36, 0.55), (0.12, 0.25), (75, 50, 40)),
    1: ((0.28, 0.45), (0.05, 0.12), (175, 135, 90)),
    2: ((0.20, 0.38), (0.00, 0.04), (135, 88, 58)),
}


def _smooth_field(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, waves: int, freq: float) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a sum of random plane waves."""
    field = np.zeros_like(xx)
    for _ in range(waves):
        angle, phase = rng.uniform(0, 2 * np.pi, size=2)
        omega = freq * rng.uniform(0.5, 1.5)
        field += np.sin(omega * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
    return field / np.sqrt(waves)


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Skin tone with smooth shading and vignetting, float (H, W, 3) in 0..255."""
    tone = np.array([225.0, 180.0, 150.0]) + rng.normal(0, 10) + rng.normal(0, 4, size=3)  # lighter/darker skin
    shade = 1.0 + 0.06 * _smooth_field(rng, yy, xx, 3, 2.0) - 0.12 * (xx**2 + yy**2)
    return tone[None, None, :] * shade[:, :, None]


def _lesion_colour(rng: np.random.Generator, cls: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Class-specific lesion colour and texture, float (H, W, 3) in 0..255."""
    base = np.array(_STYLE[cls][2], dtype=np.float64) + rng.normal(0, 8, size=3)
    colour = np.broadcast_to(base, (*xx.shape, 3)).copy()
    if cls == 0:  # mottled: mix dark brown with blue-grey, plus darker blotches
        mix = 1.0 / (1.0 + np.exp(-3.0 * _smooth_field(rng, yy, xx, 4, 7.0)))
        colour = colour * (1 - mix[..., None]) + np.array([95.0, 100.0, 125.0]) * mix[..., None]
        colour *= (1.0 - 0.25 * np.clip(_smooth_field(rng, yy, xx, 4, 11.0), 0, None))[..., None]
    elif cls == 1:  # tan with bright milia-like speckles and a fine ridged texture
        colour *= (1.0 + 0.08 * np.sin(25.0 * _smooth_field(rng, yy, xx, 2, 3.0)))[..., None]
        for cy, cx in rng.uniform(-0.5, 0.5, size=(int(rng.integers(12, 30)), 2)):
            dots = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.02**2))
            colour += 90.0 * dots[..., None]
    else:  # regular: nearly uniform, a slightly darker centre
        colour *= (1.0 - 0.1 * np.exp(-(xx**2 + yy**2) / 0.05))[..., None]
    return colour


def _hair(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Darkening factor (H, W) of a few thin curved hairs, a class-independent distractor."""
    factor = np.ones_like(xx)
    for _ in range(int(rng.integers(0, 3))):
        a, b, c = rng.uniform(-1, 1, size=3)
        distance = np.abs(yy - (a + b * xx + 0.5 * c * xx**2)) / np.sqrt(1 + b**2)
        factor *= 1.0 - 0.6 * np.exp(-((distance / 0.008) ** 2))
    return factor


def render_lesion(rng: np.random.Generator, cls: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Draws one sample of class ``cls`` (0 irregular, 1 speckled, 2 regular: see the module docstring).

    Returns:
        (image uint8 (H, W, 3), mask uint8 (H, W) with 1 inside the lesion).
    """
    height, width = size
    yy, xx = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")  # (H, W) each
    (r_lo, r_hi), (w_lo, w_hi), _ = _STYLE[cls]
    radius = rng.uniform(r_lo, r_hi)
    centre = rng.uniform(-0.2, 0.2, size=2)
    aspect, tilt = rng.uniform(0.75, 1.0), rng.uniform(0, np.pi)
    dy, dx = yy - centre[0], xx - centre[1]
    u = (np.cos(tilt) * dx + np.sin(tilt) * dy) / aspect
    v = -np.sin(tilt) * dx + np.cos(tilt) * dy
    theta, rho = np.arctan2(v, u), np.hypot(u, v)
    border = np.ones_like(theta)
    for harmonic in range(2, 7):
        border += rng.uniform(w_lo, w_hi) / np.sqrt(harmonic - 1) * np.sin(harmonic * theta + rng.uniform(0, 6.3))
    edge = radius * border - rho  # > 0 inside
    alpha = np.clip(edge / (3.0 / max(height, width)) + 0.5, 0.0, 1.0)[..., None]  # anti-aliased rim
    image = _background(rng, yy, xx) * (1 - alpha) + _lesion_colour(rng, cls, yy, xx) * alpha
    image = image * _hair(rng, yy, xx)[..., None] + rng.normal(0, 4.0, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), (edge > 0).astype(np.uint8)


class SyntheticLesions(MTLDataset):
    """``n`` generated lesion images with masks and one-hot synthetic labels; needs no files and no cache.

    Args:
        n: number of samples.
        split: "train", "val" or "test" (different images for the same seed; aliases "training", "validation")
            or "all" (= train).
        img_size: output size (int or (h, w)); images are drawn at this size.
        train: training augmentation.
        seed: base seed.
        **kwargs: ``normalize``, ``in_chans``, ``augment`` (see :class:`~fastmtl.data.base.MTLDataset`).
    """

    class_names = SYNTHETIC_CLASSES
    seg_classes = 1
    seg_class_names = ("lesion",)

    @classmethod
    def own_val_split(cls, root: str | Path | None) -> str | None:
        """Always "val": a generated split of its own."""
        return "val"

    def __init__(
        self,
        n: int = 256,
        split: str = "train",
        *,
        img_size: int | tuple[int, int] = 64,
        train: bool = False,
        seed: int = 0,
        **kwargs,
    ) -> None:
        if img_size is None:
            raise ValueError("SyntheticLesions needs an img_size")
        split = self.resolve_split(split)
        kwargs.pop("cache_dir", None)  # generated on the fly: nothing to cache
        super().__init__(img_size=img_size, train=train, cache_dir=False, **kwargs)
        self.seed, self.split = int(seed), split
        self._code = _SPLIT_CODES[split]
        classes = np.array([self._rng(i).choice(3, p=_CLASS_P) for i in range(n)], dtype=np.int64)
        ids = [f"synthetic_{split}_{i:05d}" for i in range(n)]
        self._finalize(ids, np.eye(3, dtype=np.float32)[classes], [True] * n, [True] * n, groups=ids)
        self.classes = classes

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self._code, index])

    def _load(self, index: int) -> dict[str, np.ndarray]:
        rng = self._rng(index)
        cls = int(rng.choice(3, p=_CLASS_P))  # same first draw as in __init__
        image, mask = render_lesion(rng, cls, self.img_size)
        return {"image": image, "mask": mask, "orig_size": np.array(self.img_size)}
