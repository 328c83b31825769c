"""Mask overlays for eyeballing predictions: a translucent fill per predicted class plus contours.

Prediction classes are filled with a palette colour and outlined in the same colour; the ground truth, when
given, is outlined in green. Everything is plain numpy on uint8 (H, W, 3) images, so the predict pipeline's
writer thread can draw at the image's original size without touching matplotlib.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from fastmtl.files import atomic_write_bytes

__all__ = ["GT_COLOR", "PRED_PALETTE", "case_panel", "draw_overlay", "mask_boundary", "save_png", "upscale"]

GT_COLOR = np.array([0, 255, 0], dtype=np.uint8)
# One colour per foreground class (class 1 first); cycles beyond four classes.
PRED_PALETTE = np.array([[255, 48, 48], [48, 144, 255], [255, 200, 0], [200, 64, 255]], dtype=np.uint8)


def _shift_max(mask: np.ndarray) -> np.ndarray:
    """4-neighbour dilation of a bool (H, W) mask."""
    padded = np.pad(mask, 1)
    return padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]


def mask_boundary(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Inner boundary of a bool (H, W) mask, grown to ``thickness`` pixels.

    Pixels on the image border count as boundary when they are inside the mask, so a lesion touching the
    edge is still closed.
    """
    mask = mask.astype(bool)
    inner = ~_shift_max(~np.pad(mask, 1, constant_values=False))[1:-1, 1:-1]  # erosion, outside = background
    edge = mask & ~inner
    for _ in range(max(thickness, 1) - 1):
        edge = _shift_max(edge)
    return edge


def draw_overlay(
    image: np.ndarray, pred: np.ndarray | None, gt: np.ndarray | None = None, *, alpha: float = 0.35
) -> np.ndarray:
    """Blends a predicted class map (and a ground-truth outline) onto an image.

    Args:
        image: uint8 (H, W, 3) RGB.
        pred: integer (H, W) class indices (0 = background; binary masks hold 0/1), or None.
        gt: optional integer (H, W) ground-truth class indices; its foreground is outlined in green.
        alpha: opacity of the prediction fill.

    Returns:
        uint8 (H, W, 3).
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got {image.shape}")
    for name, m in (("pred", pred), ("gt", gt)):
        if m is not None and m.shape != image.shape[:2]:
            raise ValueError(f"{name} shape {m.shape} does not match image {image.shape[:2]}")
    out = image.astype(np.float32)
    thickness = max(1, round(min(image.shape[:2]) / 200))
    contours: list[tuple[np.ndarray, np.ndarray]] = []
    if pred is not None:
        for cls in np.unique(pred[pred > 0]):
            colour = PRED_PALETTE[(int(cls) - 1) % len(PRED_PALETTE)]
            region = pred == cls
            out[region] = (1.0 - alpha) * out[region] + alpha * colour
            contours.append((mask_boundary(region, thickness), colour))
    if gt is not None:
        contours.append((mask_boundary(gt > 0, thickness), GT_COLOR))
    result = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    for edge, colour in contours:
        result[edge] = colour
    return result


def upscale(array: np.ndarray, min_side: int) -> np.ndarray:
    """Repeats pixels (nearest neighbour, an integer factor) until the shorter side is at least ``min_side``."""
    factor = max(1, -(-min_side // max(min(array.shape[:2]), 1)))
    return array if factor == 1 else np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def case_panel(
    image: np.ndarray,
    pred: np.ndarray,
    gt: np.ndarray | None,
    title: str,
    class_names: tuple[str, ...] | list[str] = ("lesion",),
    *,
    min_side: int = 256,
) -> np.ndarray:
    """One evaluated image for a person to read: a title line, [image | prediction + ground-truth outline] side by
    side, each at least ``min_side`` pixels on its shorter side (nearest-neighbour upscaling, so small inputs stay
    crisp), and a legend with the ground-truth and prediction colours.

    Args:
        image: uint8 (H, W, 3) RGB.
        pred: integer (H, W) predicted classes (0 = background).
        gt: integer (H, W) ground-truth classes, or None.
        title: the title line (e.g. the image id and its Dice).
        class_names: foreground class names, class 1 first (legend entries for the prediction colours).
        min_side: the smallest panel side in pixels.

    Returns:
        uint8 (H', W', 3).
    """
    from PIL import ImageDraw

    big = upscale(image, min_side)
    factor = big.shape[0] // image.shape[0]
    grow = (lambda m: None if m is None else upscale(m, min_side)) if factor > 1 else (lambda m: m)
    overlay = draw_overlay(big, grow(pred), grow(gt))
    gap = np.full((big.shape[0], 8, 3), 255, dtype=np.uint8)
    body = np.concatenate([big, gap, overlay], axis=1)
    text, pad = max(14, body.shape[1] // 40), 6
    line = text + 2 * pad
    legend = [(tuple(int(c) for c in GT_COLOR), "ground truth (outline)")] if gt is not None else []
    legend += [
        (tuple(int(c) for c in PRED_PALETTE[i % len(PRED_PALETTE)]), f"prediction: {name} (fill + outline)")
        for i, name in enumerate(class_names)
    ]
    canvas = Image.new("RGB", (body.shape[1], body.shape[0] + line * (1 + len(legend))), "white")
    canvas.paste(Image.fromarray(body), (0, line))
    draw, font = ImageDraw.Draw(canvas), _font(text)
    draw.text((pad, pad), title, fill="black", font=font)
    y = line + body.shape[0]
    for colour, label in legend:
        draw.rectangle((pad, y + pad, pad + 2 * text, y + pad + text), fill=colour)
        draw.text((3 * text, y + pad), label, fill="black", font=font)
        y += line
    return np.asarray(canvas)


def save_png(path: str | os.PathLike, array: np.ndarray, *, atomic: bool = False) -> Path:
    """Writes a uint8 (H, W) or (H, W, 3) array as PNG (through a temporary file when ``atomic``)."""
    path = Path(path)
    image = Image.fromarray(np.ascontiguousarray(array))
    if atomic:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        atomic_write_bytes(path, buffer.getvalue())
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG")
    return path
