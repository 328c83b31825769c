"""The mutable state of a training run and its JSON form (saved in the checkpoint sidecar for ``--resume``)."""

from __future__ import annotations

import base64
import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["RunState", "capture_rng", "restore_rng"]

_COUNTERS = ("steps", "images", "seconds")


def _encode(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _decode(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch CPU (and CUDA, when present) generator states as JSON-ready values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *(v.item() if hasattr(v, "item") else v for v in np_state[2:])],
        "torch": _encode(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_encode(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_decode(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_decode(s) for s in state["cuda"]])


@dataclass
class RunState:
    """Where a run is and what it has seen.

    Attributes:
        epoch: current epoch (0-based); after an epoch ends it is the next one.
        step_in_epoch: optimizer steps done in ``epoch``.
        global_step: optimizer steps done in the whole run.
        running: sums of the loss terms over the steps of the current epoch, plus ``steps`` and ``images``.
        history: one dict of metrics per finished epoch.
        best_value: best validation selection metric so far (None before the first validation).
        best_epoch: epoch that reached it.
        scaler: ``GradScaler.state_dict()`` for fp16 runs.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    running: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int | None = None
    scaler: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunState:
        """Inverse of :meth:`to_json`."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def add_step(self, terms: dict[str, float], images: int) -> None:
        """Accumulates one step's loss terms into :attr:`running`."""
        for key, value in terms.items():
            self.running[key] = self.running.get(key, 0.0) + value
        self.running["steps"] = self.running.get("steps", 0) + 1
        self.running["images"] = self.running.get("images", 0) + images

    def epoch_means(self) -> dict[str, float]:
        """Mean of each loss term over the epoch's steps (``train_<term>``) and the throughput ``images_per_s``."""
        steps = max(self.running.get("steps", 0), 1)
        means = {f"train_{k}": v / steps for k, v in self.running.items() if k not in _COUNTERS}
        seconds = self.running.get("seconds", 0.0)
        means["images_per_s"] = self.running.get("images", 0) / seconds if seconds > 0 else math.nan
        return means
