"""Mask overlays for eyeballing predictions: a translucent fill per predicted class plus contours.

Prediction classes are filled with a palette colour and outlined in the same colour; the ground truth, when
given, is outlined in green. Everything is plain numpy (and PIL for text and scaling) on uint8 (H, W, 3) images, so
the predict pipeline's writer thread can draw without touching matplotlib. :func:`case_panel` (evaluation's worst
cases) and :func:`prediction_overlay` (``predict --overlays``) add text and a colour legend and bring the image to a
readable size: a tiny one upscaled by whole pixels, a large one scaled down to at most 1024 px.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from fastmtl.files import atomic_write_bytes

__all__ = ["GT_COLOR", "PRED_PALETTE", "case_panel", "draw_overlay", "fit_side", "mask_boundary", "prediction_overlay",
           "save_png", "upscale"]  # fmt: skip

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


def _legend(class_names, gt: bool) -> list[tuple[tuple[int, ...], str]]:
    entries = [(tuple(int(c) for c in GT_COLOR), "ground truth (outline)")] if gt else []
    return entries + [
        (tuple(int(c) for c in PRED_PALETTE[i % len(PRED_PALETTE)]), f"prediction: {name} (fill + outline)")
        for i, name in enumerate(class_names)
    ]


def _wrap(draw, items: list[str], font, width: int) -> list[str]:
    """``items`` joined by commas into lines no wider than ``width`` pixels (an item wider alone gets a line)."""
    lines: list[str] = []
    for item in items:
        joined = f"{lines[-1]}, {item}" if lines else item
        if lines and draw.textlength(joined, font=font) <= width:
            lines[-1] = joined
        else:
            lines.append(item)
    return lines


def _annotate(body: np.ndarray, title: list[list[str]], legend: list[tuple[tuple[int, ...], str]]) -> np.ndarray:
    """``body`` with text above (each entry of ``title`` a paragraph of comma-joined items, wrapped to the width)
    and a colour legend below, on white."""
    from PIL import ImageDraw

    size, pad = max(14, body.shape[1] // 40), 6
    line, font = size + 2 * pad, _font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text = [row for items in title for row in _wrap(probe, items, font, body.shape[1] - 2 * pad)]
    top = line * len(text)
    canvas = Image.new("RGB", (body.shape[1], top + body.shape[0] + line * len(legend)), "white")
    canvas.paste(Image.fromarray(body), (0, top))
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(text):
        draw.text((pad, i * line + pad), row, fill="black", font=font)
    y = top + body.shape[0]
    for colour, label in legend:
        draw.rectangle((pad, y + pad, pad + 2 * size, y + pad + size), fill=colour)
        draw.text((3 * size, y + pad), label, fill="black", font=font)
        y += line
    return np.asarray(canvas)


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
    big = upscale(image, min_side)
    factor = big.shape[0] // image.shape[0]
    grow = (lambda m: None if m is None else upscale(m, min_side)) if factor > 1 else (lambda m: m)
    overlay = draw_overlay(big, grow(pred), grow(gt))
    gap = np.full((big.shape[0], 8, 3), 255, dtype=np.uint8)
    body = np.concatenate([big, gap, overlay], axis=1)
    return _annotate(body, [[title]], _legend(class_names, gt is not None))


def fit_side(image: np.ndarray, pred: np.ndarray, min_side: int, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, class map) at a size a person can read: a small image upscaled by whole pixels until its shorter side
    is at least ``min_side`` (its longer side at most ``max_side``), a large one scaled down (area-averaged; the class
    map nearest) until its longer side is ``max_side``."""
    h, w = image.shape[:2]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = Image.fromarray(image).resize(size, Image.Resampling.BOX)
        classes = Image.fromarray(pred.astype(np.uint8)).resize(size, Image.Resampling.NEAREST)
        return np.asarray(small), np.asarray(classes)
    factor = max(1, min(-(-min_side // max(min(h, w), 1)), max_side // max(h, w)))
    return upscale(image, factor * min(h, w)), upscale(pred, factor * min(h, w))


def prediction_overlay(
    image: np.ndarray,
    pred: np.ndarray,
    title: str,
    probs: np.ndarray | None = None,
    class_names: tuple[str, ...] | list[str] = (),
    seg_names: tuple[str, ...] | list[str] = ("lesion",),
    *,
    threshold: float = 0.5,
    min_side: int = 256,
    max_side: int = 1024,
) -> np.ndarray:
    """One predicted image for a person to read (``fastmtl predict --overlays``): the image id, the class
    probabilities (a class above ``threshold`` marked ``(positive)``) and the predicted area on top, the image at a
    readable size (:func:`fit_side`: at least ``min_side`` px on its shorter side, at most ``max_side`` on its
    longer) with the prediction filled and outlined, and a legend of the prediction colours below.

    Args:
        image: uint8 (H, W, 3) RGB at its original size.
        pred: integer (H, W) predicted classes (0 = background; a binary mask holds 0/1).
        title: the first line (the image id).
        probs: the class probabilities, in ``class_names`` order, or None (no class head).
        seg_names: foreground segmentation class names, class 1 first.

    Returns:
        uint8 (H', W', 3).
    """
    image, pred = fit_side(image, pred, min_side, max_side)
    classes = [] if probs is None else [
        f"{name} {p:.2f}" + (" (positive)" if p > threshold else "") for name, p in zip(class_names, probs, strict=True)
    ]  # fmt: skip
    area = [f"predicted area {100 * float((pred > 0).mean()):.1f}%"]
    return _annotate(draw_overlay(image, pred), [[title], classes, area], _legend(seg_names, False))


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
