"""A training run's folder: what ``train`` may write into, and whether a resumed run still matches it.

A folder that ``train`` writes into gets a marker file (``.fastmtl-train``); a new run refuses a folder that holds
files without it (a user's notes in ``log.csv``, another tool's ``config.json``: files fastmtl did not write and
would overwrite), and a folder that holds a run (``last.*``) unless resumed. ``--resume`` compares the data it
finds with the run's ``split.json`` (data folder, kind, validation source, case ids) and refuses to continue on
other data, unless told to (``other_data``).
"""

from __future__ import annotations

import json
from typing import Any

from fastmtl.checkpoint.rundir import RunDir
from fastmtl.checkpoint.sets import set_files
from fastmtl.checkpoint.store import CheckpointError
from fastmtl.engine.train.loaders import split_changes
from fastmtl.files import atomic_write_bytes

__all__ = ["check_out_dir", "check_same_data", "mark"]


def check_out_dir(run_dir: RunDir, resume: bool) -> None:
    """Refuses a resume without a run, a new run into a folder holding one, and a new run into a folder holding
    files that fastmtl train did not write (nothing there is touched)."""
    out_dir, held = run_dir.path, run_dir.held()
    if resume and not held:
        names = " / ".join(f.name for f in set_files(run_dir.last)[1:][::-1])
        raise CheckpointError(f"nothing to resume in {out_dir}: no {names} there")
    if not resume and held:
        raise ValueError(f"{out_dir} already holds a training run ({held[0].name}); resume it or pick another --out")
    if resume or run_dir.marker.is_file():
        return
    foreign = run_dir.foreign()
    if foreign:
        raise ValueError(
            f"{out_dir} holds files that fastmtl train did not write ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); a run would overwrite them: pick another --out"
        )


def check_same_data(run_dir: RunDir, current: dict[str, Any], other_data: bool) -> None:
    """Refuses to resume the run in ``run_dir`` on data other than its ``split.json`` records (``current``: the
    record of the data found now, :func:`fastmtl.engine.train.loaders.split_record`), unless ``other_data``."""
    out_dir, path = run_dir.path, run_dir.split
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as e:
        if other_data:
            return
        raise ValueError(f"cannot resume {out_dir}: its {path.name} is unreadable ({e})") from e
    changes = split_changes(saved if isinstance(saved, dict) else {}, current)
    if changes and not other_data:
        raise ValueError(
            f"cannot resume {out_dir} on other data than it was trained on: {'; '.join(changes)}; give the run's "
            "--data-root, or --resume-other-data to continue on this data anyway"
        )


def mark(run_dir: RunDir) -> None:
    """Marks the folder as one fastmtl train writes (see the module docstring)."""
    if not run_dir.marker.is_file():
        atomic_write_bytes(run_dir.marker, b"fastmtl train output folder\n")
