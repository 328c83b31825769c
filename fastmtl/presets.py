"""Named training presets, embedded so ``fastmtl train --config quick`` works from an installed wheel.

Each preset is the dict form of a :class:`fastmtl.engine.train.config.TrainConfig` (only the keys that differ
from the defaults). ``quick`` mirrors ``configs/quick_cpu.toml`` in the repository (a test keeps them equal).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS"]

PRESETS: dict[str, dict[str, Any]] = {
    # A few minutes on a laptop CPU on ISIC-layout data (or any data folder): small images, short epochs, and the
    # variant without DFE (at 64 px the DFE's dilated 512-channel convolutions cost more than the rest together).
    "quick": {
        "model": "resformer_mtl_nodfe",
        "img_size": 64,
        "epochs": 3,
        "batch_size": 8,
        "lr": 3e-4,
        "max_steps_per_epoch": 25,
        "max_val_steps": 10,
        "num_workers": 2,
        "val_fraction": 0.1,
    },
    # `fastmtl demo`: the embedded synthetic lesions, about a minute or two on a 2-core CPU.
    "demo": {
        "model": "resformer_mtl_nodfe",
        "data": "synthetic",
        "data_options": {"n": 96},
        "img_size": 64,
        "epochs": 2,
        "batch_size": 8,
        "lr": 1e-3,
        "max_steps_per_epoch": 12,
        "max_val_steps": 2,
        "num_workers": 0,
        "drop_last": True,
    },
}
