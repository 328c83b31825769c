"""Images by path for prediction: decoded, resized and normalised in DataLoader workers, failures as values.

Unlike the training datasets these images have no masks or labels and any size, mode or bit depth; an unreadable
file becomes a ``{"index", "error"}`` item, so one corrupt image never stops a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fastmtl.data.cache import resize_image
from fastmtl.data.io import ImageReadError, read_image
from fastmtl.data.transforms import normalize_image

__all__ = ["ImagePaths", "collate_predict"]

_LUMA = torch.tensor([0.299, 0.587, 0.114])


class ImagePaths(Dataset):
    """Decodes, resizes and normalises images by path; a failure yields ``{"index", "error"}``, never raises.

    Args:
        paths: image files.
        size: model input (h, w).
        normalize: "imagenet", "raw" or "unit".
        in_chans: 3, or 1 for luminance.
    """

    def __init__(self, paths: Sequence[Path], size: tuple[int, int], normalize: str = "imagenet", in_chans: int = 3):
        self.paths, self.size, self.normalize, self.in_chans = list(paths), size, normalize, in_chans

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            pixels = read_image(self.paths[index])  # (H0, W0, 3) uint8
            resized = torch.from_numpy(np.array(resize_image(pixels, self.size)))  # a writable copy
        except ImageReadError as err:
            return {"index": index, "error": err.reason}
        except Exception as err:  # noqa: BLE001 - any decoder failure is reported per file, never fatal
            return {"index": index, "error": f"{type(err).__name__}: {err}"}
        image = resized.permute(2, 0, 1).contiguous()  # (3, h, w)
        if self.in_chans == 1:
            image = (image.float() * _LUMA[:, None, None]).sum(0, keepdim=True).round().to(torch.uint8)
        return {"index": index, "image": normalize_image(image, self.normalize), "orig_size": pixels.shape[:2]}


def collate_predict(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacks the decoded items; failures travel separately as ``failed``: list of (index, reason)."""
    ok = [item for item in items if "error" not in item]
    return {
        "index": torch.tensor([item["index"] for item in ok], dtype=torch.int64),  # (B,)
        "image": torch.stack([item["image"] for item in ok]) if ok else torch.empty(0),  # (B, C, h, w)
        "orig_size": torch.tensor([list(item["orig_size"]) for item in ok], dtype=torch.int64).reshape(-1, 2),
        "failed": [(item["index"], item["error"]) for item in items if "error" in item],
    }
