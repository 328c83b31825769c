"""The prediction forward: logits to per-image masks at the original size, batches split on CUDA out-of-memory."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastmtl.output import seg_to_classes

__all__ = ["ChunkedRunner"]


class ChunkedRunner:
    """Forward + per-image postprocessing, splitting a batch in halves on CUDA out-of-memory."""

    def __init__(self, model: nn.Module, device: torch.device, threshold: float, log) -> None:
        self.model, self.device, self.threshold, self.log = model, device, threshold, log
        self.max_chunk: int | None = None  # learned from OOMs, applies to every later batch

    def __call__(self, images: torch.Tensor, sizes: torch.Tensor) -> list[tuple[np.ndarray | None, ...]]:
        n = images.shape[0]
        step = min(n, self.max_chunk or n)
        pending = [(s, min(s + step, n)) for s in range(0, n, step)][::-1]  # a stack, first chunk on top
        results = []
        while pending:
            start, stop = pending.pop()
            try:
                results.extend(self._infer(images[start:stop], sizes[start:stop]))
                continue
            except torch.cuda.OutOfMemoryError:
                if stop - start == 1:
                    raise
            # Outside the except block, so the traceback (and the tensors it pins) is gone before the retry.
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            mid = start + (stop - start + 1) // 2
            self.max_chunk = mid - start
            self.log(f"CUDA out of memory at batch {stop - start}; retrying in chunks of {self.max_chunk}")
            pending.extend([(mid, stop), (start, mid)])
        return results

    def _infer(self, images: torch.Tensor, sizes: torch.Tensor) -> list[tuple[np.ndarray | None, ...]]:
        x = images.to(self.device, non_blocking=True)  # (b, C, h, w)
        with torch.inference_mode():  # the model runs in its path's precision (fastmtl.inference.build)
            out = self.model(x)
            probs = None if out.cls_logits is None else torch.sigmoid(out.cls_logits.float()).cpu().numpy()
            masks: list[np.ndarray | None] = [None] * x.shape[0]
            if out.seg_logits is not None:
                for i, (h, w) in enumerate(sizes.tolist()):
                    logits = F.interpolate(out.seg_logits[i : i + 1].float(), size=(h, w), mode="bilinear")
                    masks[i] = seg_to_classes(logits, self.threshold)[0].cpu().numpy()  # (H0, W0)
        return [(None if probs is None else probs[i], masks[i]) for i in range(x.shape[0])]
