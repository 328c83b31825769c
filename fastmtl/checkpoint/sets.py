"""Crash-consistent checkpoint sets: weights, optimizer state and sidecar, either wholly old or wholly new.

A set for the stem ``run/last`` is ``last.safetensors`` + ``last.train.safetensors`` + ``last.json``. Saving:

1. the three new files are written to temporary names (``.last.*.tmp``) and flushed to disk; both tensor files
   carry one random token in their metadata, the sidecar carries the token and the SHA-256 of both;
2. when the current set is complete (its three tokens agree) its files are hard-linked to ``last.prev.*``;
3. the new files replace the current ones, the sidecar last;
4. ``last.prev.*`` is removed.

A kill between any two of these operations leaves ``last`` or ``last.prev`` consistent: :func:`resumable` picks the
newest consistent set (tokens and hashes verified), says when it fell back and removes a previous set no longer
needed; :func:`clean_stale` removes the temporaries a kill left behind. No torch here: the tokens are read from
the safetensors header.

Test hook: with ``FASTMTL_TEST_CRASH_AT=n`` the process ends with ``os._exit(77)`` right after the n-th file
operation of the sets this process saves (no cleanup, as a kill would), for the crash-consistency tests.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

from fastmtl.files import file_mode, file_sha256, not_regular, reporting_full_disk

__all__ = ["CRASH_ENV", "TOKEN_KEY", "CheckpointError", "clean_stale", "resumable", "save_set", "set_files", "verify"]

TOKEN_KEY = "fastmtl_set"
CRASH_ENV = "FASTMTL_TEST_CRASH_AT"
_MAX_HEADER = 100_000_000  # the safetensors format's own limit
_ops = 0


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, inconsistent, or belongs to another model."""


def set_files(stem: Path) -> tuple[Path, Path, Path]:
    """(weights, optimizer tensors, sidecar) of the set ``stem``."""
    return tuple(stem.with_name(stem.name + suffix) for suffix in (".safetensors", ".train.safetensors", ".json"))


def prev_stem(stem: Path) -> Path:
    return stem.with_name(stem.name + ".prev")


def _file_op() -> None:
    global _ops
    at = os.environ.get(CRASH_ENV)
    if not at:
        return
    _ops += 1
    if _ops == int(at):
        os._exit(77)


def header_token(path: Path) -> str | None:
    """The set token in a safetensors file's metadata (None: absent or unreadable)."""
    if not_regular(path) is not None:  # a FIFO would block the open
        return None
    try:
        with open(path, "rb") as file:
            (size,) = struct.unpack("<Q", file.read(8))
            if size > _MAX_HEADER:
                return None
            header = json.loads(file.read(size))
    except (OSError, struct.error, ValueError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    token = meta.get(TOKEN_KEY) if isinstance(meta, dict) else None
    return token if isinstance(token, str) else None


def _sidecar(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _temp(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def clean_stale(stem: Path) -> list[Path]:
    """Removes the temporaries a killed save of ``stem`` (and ``stem.prev``) left; returns what it removed."""
    removed = sorted(stem.parent.glob(f".{stem.name}.*.tmp"))
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


def _tokens_agree(stem: Path) -> bool:
    weights, train, sidecar_path = set_files(stem)
    sidecar = _sidecar(sidecar_path) if sidecar_path.is_file() else None
    record = sidecar.get("set") if sidecar else None
    token = record.get("token") if isinstance(record, dict) else None
    return token is not None and header_token(weights) == token and header_token(train) == token


def save_set(
    stem: Path,
    write_weights: Callable[[str, str], None],
    write_train: Callable[[str, str], None],
    sidecar_bytes: Callable[[dict], bytes],
) -> None:
    """Saves one set (see the module docstring).

    Args:
        stem: the set's stem (``run/last``).
        write_weights / write_train: ``(path, token)`` -> writes that tensor file with ``{TOKEN_KEY: token}`` in
            its metadata.
        sidecar_bytes: ``record`` -> the sidecar's bytes; ``record`` (token and hashes) must be stored as ``"set"``.

    Raises:
        DiskFullError: the disk filled up; the new set's temporaries are removed and the last complete set kept.
    """
    kept = (
        f"the last complete checkpoint {stem.name}.* is untouched: free space and run again with --resume"
        if _tokens_agree(stem) or _tokens_agree(prev_stem(stem))
        else "no checkpoint of this run is complete yet: free space and start again"
    )
    with reporting_full_disk(set_files(stem)[0], f"the checkpoint {stem.name}.*", kept):
        _save_set(stem, write_weights, write_train, sidecar_bytes)


def _save_set(stem: Path, write_weights, write_train, sidecar_bytes) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(stem)
    token, files, temps = secrets.token_hex(8), set_files(stem), []
    try:
        for write, final in zip((write_weights, write_train), files[:2], strict=False):
            temps.append(_temp(final))
            write(str(temps[-1]), token)
            _fsync(temps[-1])
            os.chmod(temps[-1], file_mode())
            _file_op()
        record = {"token": token, "weights_sha256": file_sha256(temps[0]), "train_sha256": file_sha256(temps[1])}
        temps.append(_temp(files[2]))
        with open(temps[-1], "wb") as file:
            file.write(sidecar_bytes(record))
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temps[-1], file_mode())
        _file_op()
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
    previous = set_files(prev_stem(stem))
    if _tokens_agree(stem):  # keep the complete current set until the new one is in place
        for live, old in zip(files, previous, strict=True):
            old.unlink(missing_ok=True)  # (renaming a link onto another link of the same file does nothing)
            try:
                os.link(live, old)
            except OSError:  # a file system without hard links
                shutil.copyfile(live, old)
            _file_op()
    for tmp, final in zip(temps, files, strict=True):
        os.replace(tmp, final)
        _file_op()
    _fsync(stem.parent, directory=True)
    for old in previous:
        if old.exists():
            old.unlink()
            _file_op()


def verify(stem: Path) -> str | None:
    """Why the set ``stem`` is not a consistent checkpoint (None: it is). A sidecar without a set record (written
    before sets existed) is accepted as it is."""
    missing = [f.name for f in set_files(stem) if not f.is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    weights, train, sidecar_path = set_files(stem)
    sidecar = _sidecar(sidecar_path)
    if sidecar is None:
        return f"{sidecar_path.name} is not a JSON object"
    record = sidecar.get("set")
    if record is None:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("token"), str):
        return f"{sidecar_path.name} has a malformed set record"
    for path, key in ((weights, "weights_sha256"), (train, "train_sha256")):
        if header_token(path) != record["token"]:
            return f"{path.name} belongs to another save than {sidecar_path.name}"
        if file_sha256(path) != record.get(key):
            return f"{path.name} does not match the hash in {sidecar_path.name} (truncated or altered)"
    return None


def resumable(stem: Path) -> tuple[Path, str | None]:
    """The newest consistent set of ``stem`` (itself or ``stem.prev``) and, when it fell back, a line saying why.

    Raises:
        CheckpointError: no set at all, or none consistent.
    """
    clean_stale(stem)
    reasons = {}
    for candidate in (stem, prev_stem(stem)):
        if not any(f.exists() for f in set_files(candidate)):
            continue
        reason = verify(candidate)
        if reason is None:
            if candidate == stem:  # a kill after the save left the previous set: no longer needed
                for old in set_files(prev_stem(stem)):
                    old.unlink(missing_ok=True)
                return candidate, None
            why = reasons.get(stem, "its files are missing")
            return candidate, f"{stem} was cut off while saving ({why}); resuming from the previous set {candidate}"
        reasons[candidate] = reason
    if not reasons:
        names = " / ".join(f.name for f in set_files(stem))
        raise CheckpointError(f"nothing to resume in {stem.parent}: no {names} there")
    detail = "; ".join(f"{c.name}: {r}" for c, r in reasons.items())
    raise CheckpointError(
        f"cannot resume {stem.parent}: no consistent checkpoint ({detail}); the run was killed while saving its first "
        f"checkpoint: remove {stem.name}.* there and start again without --resume"
    )
