"""Image and mask decoding shared by every dataset and by the predict pipeline.

Every image, whatever its mode (greyscale, RGBA, palette, 16-bit, float TIFF), comes back as RGB uint8
(H, W, 3); every mask as uint8 (H, W) holding its stored values (class indices or 0/255). A file that is
missing, not a regular file (a FIFO, a dangling symbolic link: checked before opening, so nothing blocks), truncated
or not an image raises :class:`ImageReadError` naming the file and the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fastmtl.files import not_regular

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "read_image", "read_mask", "image_size", "to_uint8"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class ImageReadError(OSError):
    """An image or mask file could not be decoded.

    Attributes:
        path: the offending file.
        reason: why it could not be read.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self):  # keep the two-argument constructor picklable (DataLoader workers re-raise it)
        return (type(self), (self.path, self.reason))


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Scales an integer or float array of any range to uint8.

    8-bit values pass through. Integer data above 255 is scaled by its bit depth: 12-bit when the maximum
    fits in 0..4095 (common for medical scanners storing 12 bits in 16), 16-bit otherwise. Floats in 0..1
    are multiplied by 255, other floats are clipped to 0..255.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        finite = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        return np.clip(np.rint(finite * scale), 0, 255).astype(np.uint8)
    values = np.clip(array.astype(np.int64), 0, None)
    top = int(values.max()) if values.size else 0
    if top <= 255:
        return values.astype(np.uint8)
    full = 4095 if top <= 4095 else 65535
    return np.clip(np.rint(values * (255.0 / full)), 0, 255).astype(np.uint8)


def _regular(path: str | Path) -> Path:
    """``path``, checked to be a regular file before anything opens it (a FIFO named like an image would block the
    reader forever; a dangling symbolic link is named as one)."""
    reason = not_regular(path)
    if reason is not None:
        raise ImageReadError(path, reason)
    return Path(path)


def _open(path: str | Path) -> Image.Image:
    """Opens and fully decodes the first frame, turning every failure into ImageReadError."""
    path = _regular(path)
    try:
        image = Image.open(path)
        image.load()  # decode now so truncated files fail here, not later in a worker
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(path, f"{type(err).__name__}: {err}") from err
    return image


def read_image(path: str | Path) -> np.ndarray:
    """Reads any supported image file as RGB.

    Args:
        path: image file (png, jpg, tif, bmp, ...).

    Returns:
        uint8 array (H, W, 3). Greyscale is replicated, alpha dropped, palettes expanded, 16-bit scaled.

    Raises:
        ImageReadError: the file is missing, corrupt or in a mode that cannot be turned into RGB.
    """
    image = _open(path)
    try:
        if image.mode in ("RGB", "L"):
            array = np.asarray(image)
        elif image.mode in ("1", "P", "PA", "LA", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
            array = np.asarray(image.convert("RGB"))
        else:  # "I", "I;16*", "F": high bit-depth greyscale
            array = to_uint8(np.asarray(image))
    except (OSError, ValueError) as err:
        raise ImageReadError(path, f"cannot convert mode {image.mode}: {err}") from err
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageReadError(path, f"unsupported array shape {array.shape} (mode {image.mode})")
    return np.ascontiguousarray(array, dtype=np.uint8)


def read_mask(path: str | Path) -> np.ndarray:
    """Reads a mask keeping its stored values (class indices, 0/1 or 0/255).

    Palette masks give their indices; RGB masks whose channels agree give one channel, otherwise the
    per-pixel channel maximum (any coloured pixel is foreground); 16-bit masks keep values up to 255 and
    are scaled by bit depth above that.

    Returns:
        uint8 array (H, W).

    Raises:
        ImageReadError: the file is missing or corrupt.
    """
    image = _open(path)
    if image.mode in ("LA", "PA"):
        image = image.getchannel(0)
    array = np.asarray(image)
    if array.ndim == 3:
        array = array[:, :, :3]
        same = np.all(array == array[:, :, :1], axis=2).all()
        array = array[:, :, 0] if same else array.max(axis=2)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    return np.ascontiguousarray(to_uint8(array))


def image_size(path: str | Path) -> tuple[int, int]:
    """Returns (H, W) from the file header without decoding the pixels."""
    path = _regular(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(path, f"{type(err).__name__}: {err}") from err
    return height, width
