"""Writing files: atomic replacement with the usual file mode, strict JSON, and file-name-safe ids.

Every file fastmtl writes (checkpoints, JSON reports, logs, masks, figures, cache entries) goes through
:func:`replacing`: the content is written to a temporary file in the target's folder, given the mode ``open()``
would give a new file (``0o666`` less the umask, not ``mkstemp``'s private ``0o600``) and moved into place with
``os.replace``, so a reader sees the old or the complete new file, never a half-written one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "DiskFullError",
    "check_regular",
    "existing",
    "FolderBusyError",
    "atomic_write_bytes",
    "atomic_write_json",
    "exclusive_folder",
    "file_mode",
    "file_sha256",
    "is_disk_full",
    "json_dumps",
    "json_safe",
    "not_regular",
    "read_text",
    "replacing",
    "reporting_full_disk",
    "safe_name",
    "shown_path",
]

LOCK_NAME = ".fastmtl.lock"


class FolderBusyError(ValueError):
    """An output folder is in use by another fastmtl job."""


class DiskFullError(OSError):
    """A write ran out of space (or quota): the message names the folder, what was being written and the free
    space. An ``OSError`` (``errno`` ENOSPC), so the command line prints it as one ``fastmtl: error:`` line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException) -> bool:
    """True when ``error`` (or what it was raised from) says the disk or the quota is full; also for libraries
    that wrap the OS error in their own (safetensors' ``SafetensorError`` says ``(os error 28)``)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in _FULL:
            return True
        if any(f"os error {code})" in str(error) for code in _FULL):
            return True
        error = error.__cause__ or error.__context__
    return False


def _free(folder: Path) -> str:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    for unit in ("bytes", "KB", "MB", "GB"):
        if free < 1000 or unit == "GB":
            return f"{free:.0f} {unit} free" if unit == "bytes" else f"{free:.1f} {unit} free"
        free /= 1000
    return ""  # not reached


@contextmanager
def reporting_full_disk(path: str | os.PathLike, what: str, after: str = "") -> Iterator[None]:
    """Turns a full disk met inside the block into a :class:`DiskFullError` naming ``path``'s folder, ``what``
    was being written and the free space, plus ``after`` (what the user has and should do)."""
    try:
        yield
    except BaseException as error:
        if isinstance(error, DiskFullError) or not is_disk_full(error):
            raise
        folder = Path(path).parent
        tail = f"; {after}" if after else ""
        raise DiskFullError(f"no space left in {folder} while writing {what} ({_free(folder)}){tail}") from error


def not_regular(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a regular file one can read (None: it is): missing, a dangling symbolic link, a folder,
    a FIFO, a socket or a device. Readers call it before opening, so a FIFO named like an image never blocks."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"a dangling symbolic link (to {os.readlink(path)})"
        return "no such file"
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))
    return next((f"{name}, not a regular file" for test, name in kinds if test(mode)), "a device, not a regular file")


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_regular(path: str | os.PathLike, what: str) -> Path:
    """``path`` when it is a regular file; else a ``FileNotFoundError`` (missing) or ``ValueError`` (a FIFO, a
    folder, a dangling link...) naming ``what`` and the path, raised before anything opens (and blocks on) it."""
    reason = not_regular(path)
    if reason == "no such file":
        raise FileNotFoundError(f"{what} {path} does not exist")
    if reason is not None:
        raise ValueError(f"{what} {path} is {reason}")
    return Path(path)


_CP1252_UNDEFINED = {0x81, 0x8D, 0x8F, 0x90, 0x9D}


def read_text(path: str | os.PathLike, what: str) -> str:
    """The text of a file a person may have saved from a spreadsheet or an editor (CSV, TOML, list files).

    UTF-8 with or without a byte-order mark, UTF-16 with one; a file that is not UTF-8 is read as Windows-1252 (a
    superset of Latin-1 for text: they differ only in control codes no text holds) when every byte means a
    character there, else refused naming the file and the first byte that is not UTF-8. Line ends stay as they
    are (CRLF included: ``csv`` and ``tomllib`` read them). The file must be a regular one (:func:`check_regular`).

    Raises:
        FileNotFoundError / ValueError: missing, not a regular file, or in no encoding read here.
    """
    data = check_regular(path, what).read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise ValueError(f"{what} {path} starts with a UTF-16 byte-order mark but is not UTF-16: {e}") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        first = e.start
    if not _CP1252_UNDEFINED & set(data):
        return data.decode("cp1252")
    raise ValueError(
        f"{what} {path} is neither UTF-8 (byte 0x{data[first]:02x} on line {data[:first].count(10) + 1}, at offset "
        f"{first}) nor Windows-1252 / Latin-1 text; save it as UTF-8"
    )


def existing(path: str | os.PathLike, what: str, kind: str = "file") -> Path:
    """``path`` (``~`` expanded) when it exists as a ``kind`` ("file": a regular file, "dir": a folder); else an
    ``OSError`` naming ``what``, the path and what is there (a folder, a FIFO, a dangling link...)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} {path} {'is ' + str(not_regular(p)) if p.is_symlink() else 'does not exist'}")
    if kind == "file" and not p.is_file():  # a folder, or a FIFO that would block whatever opens it
        raise IsADirectoryError(f"{what} {path} is {'a folder' if p.is_dir() else not_regular(p)}; expected a file")
    if kind == "dir" and not p.is_dir():
        raise NotADirectoryError(f"{what} {path} is a file; expected a folder")
    return p


def _umask() -> int:
    """The process umask, read without changing it where Linux reports it (``os.umask`` sets it, which races with
    threads creating files meanwhile, e.g. prediction's writer thread)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask."""
    return 0o666 & ~_umask()


@contextmanager
def replacing(
    path: str | os.PathLike, *, prefix: str | None = None, what: str | None = None, after: str = ""
) -> Iterator[str]:
    """Yields a temporary path in ``path``'s folder (created); on success it gets :func:`file_mode` and replaces
    ``path``, on any error it is removed, so ``path`` is either the old or the complete new file. A full disk
    (``ENOSPC`` / ``EDQUOT``, also wrapped in a library's error such as safetensors') is raised as a
    :class:`DiskFullError` naming the folder, the file and the free space.

    Args:
        path: the file to write.
        prefix: the temporary's name prefix (default ``.<name>.``): dot-names keep listings and globs clean.
        what / after: for the full-disk error: what was being written (default the file's name) and what the
            user has and should do.
    """
    path = Path(path)
    with reporting_full_disk(path, what or path.name, after):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix or f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            yield tmp
            os.chmod(tmp, file_mode())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, what: str | None = None, after: str = "") -> None:
    """Writes ``data`` to ``path`` through :func:`replacing` (flushed to disk before the rename; ``what`` /
    ``after``: see there)."""
    with replacing(path, what=what, after=after) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def json_safe(value: Any, *, strict: bool = True) -> Any:
    """A JSON-ready version of ``value``: tensors and numpy values become plain numbers or lists, tuples and sets
    lists, paths strings, mapping keys strings.

    Args:
        value: anything built from those, dicts, lists and JSON scalars.
        strict: NaN / inf become None (strict JSON has no NaN). False keeps them, for files only Python reads
            back (checkpoint metadata and sidecars, where a NaN metric must stay NaN on resume).
    """
    if isinstance(value, dict):
        return {str(k): json_safe(v, strict=strict) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v, strict=strict) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # torch / numpy arrays and scalars
        return json_safe(value.tolist(), strict=strict)
    if strict and isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_dumps(obj: Any, *, strict: bool = True, indent: int | None = None) -> str:
    """``json.dumps`` of :func:`json_safe` ``obj`` with sorted keys."""
    return json.dumps(json_safe(obj, strict=strict), indent=indent, sort_keys=True)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, strict: bool = True) -> None:
    """Writes ``obj`` as indented, key-sorted JSON atomically (``strict``: see :func:`json_safe`)."""
    atomic_write_bytes(path, (json_dumps(obj, strict=strict, indent=2) + "\n").encode())


def shown_path(path: str | os.PathLike) -> str:
    """A path as text that is always valid UTF-8: a file name whose bytes are not UTF-8 (Python holds them as
    surrogate escapes) keeps them as ``\\xNN`` escapes, e.g. ``caf\\xe9.png``; any other path is unchanged."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def safe_name(text: str) -> str:
    """A file-name-safe version of an image id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "image"


def _take_lock(lock: Path) -> int | None:
    """An fd holding an exclusive ``flock`` on ``lock`` (None: another process holds it)."""
    import fcntl

    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:  # the holder before us may have removed the file between our open and our lock: lock the new one
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def exclusive_folder(folder: str | os.PathLike, job: str, *, enabled: bool = True) -> Iterator[None]:
    """Holds an exclusive lock on an output folder (created) for the duration of a job.

    The lock is an ``flock`` on ``<folder>/.fastmtl.lock``, so the kernel releases it when the process dies, however
    it dies: a killed job never leaves a stale lock. The file names the holder (job, pid, host, command, start time)
    for the error a second job gets; it is removed on release, and so is the folder when the job created it and
    left it empty.

    Raises:
        FolderBusyError: another process holds the folder.
    """
    if not enabled:
        yield
        return
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    fd = _take_lock(lock)
    if fd is None:
        try:
            holder = lock.read_text().strip() or "another process"
        except OSError:
            holder = "another process"
        raise FolderBusyError(f"{folder} is in use by another fastmtl job ({holder}); wait for it or use another --out")
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200]
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    os.ftruncate(fd, 0)
    holder = f"{job}, pid {os.getpid()} on {socket.gethostname()}, started {stamp}: {command}"
    os.write(fd, holder.encode(errors="backslashreplace"))  # an argument that is not UTF-8 stays escaped
    try:
        yield
    finally:
        Path(lock).unlink(missing_ok=True)
        os.close(fd)
        if created:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                pass
