"""On-disk cache of decoded, resized arrays.

Decoding a full-resolution dermoscopy JPEG or a RETOUCH volume costs far more than a training step needs,
so each item is decoded and resized once and stored as an uncompressed ``.npz`` of uint8 arrays. The key
hashes the source files' resolved paths, sizes and modification times plus whatever the caller adds (the
target size, the mask rule), so touching a source file or changing the size makes a new entry. Entries are
written to a temporary file and moved into place with ``os.replace``, so concurrent DataLoader workers and
interrupted runs never leave a half-written entry behind (:func:`fastmtl.files.replacing`; entries get the usual
file mode, so a cache shared by a group stays readable). Each entry carries the SHA-256 of its arrays (names,
dtypes, shapes and bytes), checked whenever it is read: an entry truncated or altered on disk is removed and
rebuilt with one printed line, never used and never fatal. Stale entries are never read again; delete the folder
to reclaim the space.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from fastmtl.files import replacing

__all__ = ["CACHE_VERSION", "ArrayCache", "default_cache_dir", "source_key", "resize_image", "resize_mask"]

# 2: a mask marking the lesion with a value other than 255 is read (was empty); 3: entries carry a checksum
CACHE_VERSION = 3  # bump when the stored layout or the resize rules change

Arrays = dict[str, np.ndarray]
_CHECKSUM = "__sha256__"  # the entry's own checksum, stored beside its arrays


def _checksum(arrays: Arrays) -> np.ndarray:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
        digest.update(array.tobytes())
    return np.frombuffer(digest.digest(), dtype=np.uint8)


def default_cache_dir() -> Path:
    """``$FASTMTL_CACHE`` when set, else ``~/.cache/fastmtl``."""
    env = os.environ.get("FASTMTL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fastmtl"


def source_key(sources: Sequence[str | Path], *extra: object) -> str:
    """Hex digest identifying decoded content: each source's path, size and mtime, plus ``extra``.

    Args:
        sources: files the entry is derived from (missing files raise FileNotFoundError).
        *extra: JSON-serialisable parameters that change the content (target size, mask rule, slice index).
    """
    parts: list[object] = [CACHE_VERSION]
    for source in sources:
        path = Path(source).resolve()
        stat = path.stat()
        parts.append([str(path), stat.st_size, stat.st_mtime_ns])
    parts.extend(extra)
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


class ArrayCache:
    """Key -> dict of uint8 arrays, on disk under ``root`` or in process memory when ``root`` is None.

    Args:
        root: cache folder (created on first write); None keeps entries in a dict for this process only.
    """

    def __init__(self, root: str | Path | None) -> None:
        self.root = None if root is None else Path(root).expanduser()
        self._memory: dict[str, Arrays] = {}

    def __repr__(self) -> str:
        return f"ArrayCache({str(self.root) if self.root else 'memory'})"

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.npz"

    def get(self, key: str) -> Arrays | None:
        """Returns the stored arrays, or None on a miss; a damaged entry (unreadable, truncated, or arrays that do
        not match its checksum) is removed with a printed line, so the caller rebuilds it."""
        if self.root is None:
            return self._memory.get(key)
        path = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 - zipfile.BadZipFile, OSError, ValueError, EOFError...: rebuild it
            return self._damaged(path, f"{type(e).__name__}: {e}")
        stored = arrays.pop(_CHECKSUM, None)
        if stored is None or not np.array_equal(stored, _checksum(arrays)):
            return self._damaged(path, "its arrays do not match its checksum")
        return arrays

    @staticmethod
    def _damaged(path: Path, reason: str) -> None:
        print(f"fastmtl: the cache entry {path} is damaged ({reason}); rebuilding it", file=sys.stderr)
        path.unlink(missing_ok=True)

    def put(self, key: str, arrays: Arrays) -> None:
        """Stores ``arrays`` under ``key`` atomically."""
        if self.root is None:
            self._memory[key] = arrays
            return
        with replacing(self._path(key), prefix=f".{key[:8]}-") as tmp, open(tmp, "wb") as file:
            np.savez(file, **arrays, **{_CHECKSUM: _checksum(arrays)})

    def get_or_build(self, key: str, build: Callable[[], Arrays]) -> Arrays:
        """Returns the cached arrays for ``key``, calling ``build`` and storing its result on a miss."""
        arrays = self.get(key)
        if arrays is None:
            arrays = build()
            self.put(key, arrays)
        return arrays


def resize_image(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resizes uint8 (H, W, C) or (H, W) to ``size`` = (h, w): area averaging when shrinking, else bilinear."""
    if size is None or tuple(image.shape[:2]) == tuple(size):
        return image
    height, width = size
    shrinking = height * width < image.shape[0] * image.shape[1]
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize((width, height), resample=resample))


def resize_mask(mask: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resizes uint8 (H, W) class indices to ``size`` = (h, w) with nearest neighbour."""
    if size is None or tuple(mask.shape[:2]) == tuple(size):
        return mask
    height, width = size
    return np.asarray(Image.fromarray(mask).resize((width, height), resample=Image.Resampling.NEAREST))
