"""The batches the kernel and model benchmarks run; the launch shapes themselves are the model's
(:mod:`fastmtl.models.launches`: ``dfe_shapes()``, ``window_attention_shapes()``, ``IMG_SIZES``)."""

from __future__ import annotations

GPU_BATCHES = (1, 8, 64)
SUITE_BATCH = 64  # the batch the GPU suite judges kernel and inference goals at
