"""A training run's folder (``fastmtl train --out``) and its layout, in one place.

::

    OUT/.fastmtl-train            marker: fastmtl train writes this folder (a new run refuses a foreign one)
    OUT/.fastmtl.lock             the lock a job holds while it writes (fastmtl.files.exclusive_folder)
    OUT/config.json, config.toml  the resolved config
    OUT/split.json                the data the run trained on (folder, kind, validation source, case ids)
    OUT/last.safetensors, last.train.safetensors, last.json
                                  the resumable set (weights, optimizer tensors, sidecar; fastmtl.checkpoint.sets),
                                  with last.prev.* while a save is in flight and .last.*.tmp temporaries
    OUT/best.safetensors, best.train.safetensors, best.json
                                  the weights selected on validation
    OUT/log.jsonl, log.csv        one row per epoch
    OUT/curves.png                the learning curves

Train, resume, the demo, the experiments and the command line ask a :class:`RunDir` for these names.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from fastmtl.checkpoint.sets import clean_stale, prev_stem, resumable, set_files
from fastmtl.files import LOCK_NAME, exclusive_folder

__all__ = ["RunDir"]

LAST, BEST = "last", "best"
WEIGHTS = ".safetensors"


@dataclass(frozen=True)
class RunDir:
    """The folder ``path`` of one training run; every file name in it comes from here."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    # ---------------------------------------------------------------- checkpoints
    @property
    def last(self) -> Path:
        """The stem of the resumable set (``last``; its files: :func:`fastmtl.checkpoint.sets.set_files`)."""
        return self.path / LAST

    @property
    def best(self) -> Path:
        """The stem of the checkpoint selected on validation."""
        return self.path / BEST

    @property
    def last_weights(self) -> Path:
        return self.path / (LAST + WEIGHTS)

    @property
    def best_weights(self) -> Path:
        return self.path / (BEST + WEIGHTS)

    def held(self) -> list[Path]:
        """The files of a training run here (``last.*`` or ``last.prev.*``): a new run refuses the folder."""
        return [f for stem in (self.last, prev_stem(self.last)) for f in set_files(stem) if f.exists()]

    def has_training_state(self) -> bool:
        """Whether the resumable set's sidecar (``last.json``) is here."""
        return set_files(self.last)[2].is_file()

    def training_state(self) -> list[Path]:
        """The resumable state's files (``last.*``, ``last.prev.*``, a cut-off save's temporaries); ``best`` is not
        among them."""
        patterns = (f"{LAST}.*", f".{LAST}.*.tmp")
        return [p for pattern in patterns for p in self.path.glob(pattern) if p.is_file()]

    def resumable(self) -> tuple[Path, str | None]:
        """The newest consistent ``last`` set and, when it fell back to ``last.prev``, why
        (:func:`fastmtl.checkpoint.sets.resumable`)."""
        return resumable(self.last)

    def clean_stale(self) -> None:
        """Removes the temporaries a killed save left behind."""
        for stem in (self.last, self.best):
            clean_stale(stem)

    def selected(self) -> tuple[Path, str]:
        """(weights file, "best" or "last"): ``best`` when a validation selected it, else ``last``.

        Raises:
            FileNotFoundError: neither is here.
        """
        for name, path in ((BEST, self.best_weights), (LAST, self.last_weights)):
            if path.is_file():
                return path, name
        raise FileNotFoundError(f"{self.path} holds neither {BEST}{WEIGHTS} nor {LAST}{WEIGHTS}: nothing was trained")

    # ---------------------------------------------------------------- records
    @property
    def marker(self) -> Path:
        return self.path / ".fastmtl-train"

    @property
    def config_json(self) -> Path:
        return self.path / "config.json"

    @property
    def config_toml(self) -> Path:
        return self.path / "config.toml"

    @property
    def split(self) -> Path:
        return self.path / "split.json"

    @property
    def log_jsonl(self) -> Path:
        return self.path / "log.jsonl"

    @property
    def log_csv(self) -> Path:
        return self.path / "log.csv"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    def foreign(self) -> list[str]:
        """Names of the files here that are not the lock (for a folder without the marker: not fastmtl's)."""
        return sorted(p.name for p in self.path.iterdir() if p.name != LOCK_NAME) if self.path.is_dir() else []

    # ---------------------------------------------------------------- lock
    def lock(self, job: str, *, enabled: bool = True) -> contextlib.AbstractContextManager:
        """Holds the folder's lock for ``job`` (a second job into it is refused at once)."""
        return exclusive_folder(self.path, job, enabled=enabled)
