"""RETOUCH retinal OCT volumes (official release layout), served as B-scans.

    root/RETOUCH-TrainingSet-<Vendor>/<CASE>/oct.mhd + oct.raw              OCT volume (MetaImage)
    root/RETOUCH-TrainingSet-<Vendor>/<CASE>/reference.mhd + reference.raw  labels 0 bg, 1 IRF, 2 SRF, 3 PED

``root`` may also be one vendor folder or one case folder. The vendor (Cirrus, Spectralis, Topcon) is read
from the path, else taken from the ``vendor`` option. ``sitk.GetArrayFromImage`` gives (n_bscans, H, W):
the first axis indexes B-scans. Volumes are large, so each one is read once, its B-scans resized and written
to the cache as separate entries together with the per-B-scan presence labels (IRF, SRF, PED computed at
full resolution); items then read one small entry. 16-bit and float volumes are scaled to uint8 per volume
(minimum to 99.9th percentile). Splits are by volume, per vendor, seeded. A case without ``reference.mhd``
(the official test set) gives B-scans with ``has_mask`` and ``has_label`` False.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastmtl.data.base import CacheDir, MTLDataset
from fastmtl.data.cache import resize_image, resize_mask, source_key
from fastmtl.data.splits import select_split
from fastmtl.data.tables import Problem

__all__ = ["RETOUCH_CLASSES", "RETOUCH_SEG_CLASSES", "RETOUCH_VENDORS", "Retouch", "RetouchVolume", "find_volumes"]

log = logging.getLogger(__name__)

RETOUCH_CLASSES = ("IRF", "SRF", "PED")
RETOUCH_SEG_CLASSES = ("irf", "srf", "ped")  # foreground labels 1..3 of ``reference.mhd`` (metric keys dsc_irf ...)
RETOUCH_VENDORS = ("Cirrus", "Spectralis", "Topcon")


@dataclass(frozen=True)
class RetouchVolume:
    """One case: its vendor, files and B-scan geometry (n_bscans, H, W) from the header."""

    case_id: str
    vendor: str
    oct_path: Path
    ref_path: Path | None
    shape: tuple[int, int, int]

    @property
    def name(self) -> str:
        return f"{self.vendor}/{self.case_id}"

    @property
    def sources(self) -> list[Path]:
        """Every file the cached B-scans derive from (headers and data files)."""
        folder = self.oct_path.parent
        return sorted(p for p in folder.iterdir() if p.stem in ("oct", "reference") and p.is_file())


def _vendor_from_path(path: Path) -> str | None:
    for part in reversed(path.parts):
        for vendor in RETOUCH_VENDORS:
            if vendor.lower() in part.lower():
                return vendor
    return None


def _header_shape(path: Path) -> tuple[int, int, int]:
    """(n_bscans, H, W) from a MetaImage header without reading the voxels."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise ValueError(f"cannot read MetaImage header {path}: {str(err).strip().splitlines()[-1]}") from err
    size = reader.GetSize()  # (x=W, y=H, z=n) in ITK order
    if len(size) != 3:
        raise ValueError(f"{path} is {len(size)}-D; a RETOUCH volume is 3-D")
    return (size[2], size[1], size[0])


def find_volumes(root: str | Path, vendor: str | None = None) -> list[RetouchVolume]:
    """Finds ``oct.mhd`` case folders up to two levels below ``root``, sorted by vendor and case."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"RETOUCH folder {root} not found")
    paths = sorted({*root.glob("oct.mhd"), *root.glob("*/oct.mhd"), *root.glob("*/*/oct.mhd")})
    if not paths:
        raise FileNotFoundError(f"no RETOUCH volumes (<case>/oct.mhd) under {root}")
    volumes = []
    for path in paths:
        found = _vendor_from_path(path.resolve())
        ref = path.parent / "reference.mhd"
        volumes.append(
            RetouchVolume(
                case_id=path.parent.name,
                vendor=found or vendor or "unknown",
                oct_path=path,
                ref_path=ref if ref.is_file() else None,
                shape=_header_shape(path),
            )
        )
    if vendor is not None:
        volumes = [v for v in volumes if v.vendor.lower() == vendor.lower()]
        if not volumes:
            raise ValueError(f"no {vendor} volumes under {root}")
    return sorted(volumes, key=lambda v: (v.vendor, v.case_id))


def _read_volume(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # (n_bscans, H, W)
    except RuntimeError as err:
        raise ValueError(f"cannot read MetaImage volume {path}: {str(err).strip().splitlines()[-1]}") from err


def _volume_to_uint8(volume: np.ndarray) -> np.ndarray:
    if volume.dtype == np.uint8:
        return volume
    low, high = float(volume.min()), float(np.percentile(volume, 99.9))
    scaled = (volume.astype(np.float32) - low) * (255.0 / max(high - low, 1e-6))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


class Retouch(MTLDataset):
    """B-scans of RETOUCH volumes, split by volume.

    Args:
        root: release folder, vendor folder or case folder.
        split: "train", "val", "test" or "all".
        img_size: stored and output size (512 in the paper).
        train: training augmentation.
        vendor: keep only this vendor (the paper trains one model per vendor); also the vendor of volumes
            whose path names none.
        fractions: train / val / test shares of the volumes (weighted by B-scans), applied per vendor.
        seed: split seed.
        **kwargs: forwarded to :class:`~fastmtl.data.base.MTLDataset`.
    """

    class_names = RETOUCH_CLASSES
    seg_classes = 4
    seg_class_names = RETOUCH_SEG_CLASSES

    @classmethod
    def own_val_split(cls, root: str | Path | None) -> str | None:
        """Always "val": the seeded split by volume is built into the dataset."""
        return "val"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        img_size: int | tuple[int, int] | None = 512,
        train: bool = False,
        cache_dir: CacheDir = None,
        vendor: str | None = None,
        fractions: tuple[float, ...] = (0.7, 0.15, 0.15),
        seed: int = 1234,
        **kwargs,
    ) -> None:
        super().__init__(img_size=img_size, train=train, cache_dir=cache_dir, **kwargs)
        self.root, self.split = Path(root), self.resolve_split(split)
        volumes = find_volumes(self.root, vendor)
        self.volumes = self._readable(self._select(volumes, self.split, fractions, seed))
        self.items: list[tuple[int, int]] = []  # (volume index, B-scan index)
        ids, labels, has_labels, groups = [], [], [], []
        for v, volume in enumerate(self.volumes):
            presence = self._prepare(volume)["presence"]  # (n_bscans, 3), cached by _readable
            for k in range(volume.shape[0]):
                self.items.append((v, k))
                ids.append(f"{volume.name}/{k:03d}")
                groups.append(volume.name)
            labels.append(presence)
            has_labels += [volume.ref_path is not None] * volume.shape[0]
        label_table = np.concatenate(labels) if labels else np.zeros((0, 3))
        self._finalize(ids, label_table, has_labels, has_labels, groups)

    @staticmethod
    def _select(volumes: list[RetouchVolume], split: str, fractions, seed: int) -> list[RetouchVolume]:
        """Volumes of ``split``: a grouped split per vendor, each volume weighted by its B-scans."""
        chosen = []
        for vendor in sorted({v.vendor for v in volumes}):
            mine = [v for v in volumes if v.vendor == vendor]
            groups = [v.name for v in mine for _ in range(v.shape[0])]
            keep = {groups[i] for i in select_split(groups, split, fractions, seed)}
            chosen += [v for v in mine if v.name in keep]
        return chosen

    def _readable(self, volumes: list[RetouchVolume]) -> list[RetouchVolume]:
        """``volumes`` extracted into the cache; a volume that cannot be read, or whose reference differs in size
        or holds labels outside 0..3, is refused, or with ``strict_labels=False`` left out and recorded in
        ``label_problems`` (so ``fastmtl check-data`` names every bad volume, not the first)."""
        good = []
        for volume in volumes:
            try:
                self._prepare(volume)
            except ValueError as err:
                if self.strict_labels:
                    raise
                self.label_problems.append(Problem(str(volume.oct_path.parent), "unreadable volume", str(err)))
                continue
            good.append(volume)
        return good

    def _slice_key(self, volume: RetouchVolume, k: int) -> str:
        return source_key(volume.sources, "retouch-bscan", self.img_size, k)

    def _prepare(self, volume: RetouchVolume, force: bool = False) -> dict[str, np.ndarray]:
        """Extracts every B-scan of ``volume`` into the cache once; returns its presence labels."""
        meta_key = source_key(volume.sources, "retouch-volume", self.img_size)
        meta = None if force else self.cache.get(meta_key)
        if meta is not None:
            return meta
        log.info("extracting RETOUCH volume %s (%d B-scans)", volume.name, volume.shape[0])
        image = _volume_to_uint8(_read_volume(volume.oct_path))  # (n, H, W)
        ref = None if volume.ref_path is None else _read_volume(volume.ref_path)
        if ref is not None and ref.shape != image.shape:
            raise ValueError(
                f"size mismatch: volume {volume.oct_path} is {image.shape} but reference {volume.ref_path} is "
                f"{ref.shape} (n_bscans, H, W)"
            )
        if ref is not None and (ref.min() < 0 or ref.max() > 3):
            raise ValueError(f"reference {volume.ref_path} holds labels outside 0..3: {np.unique(ref)[:10]}")
        orig = np.array(image.shape[1:])
        for k in range(image.shape[0]):
            arrays = {"image": resize_image(image[k], self.img_size), "orig_size": orig}  # (h, w) grey
            if ref is not None:
                arrays["mask"] = resize_mask(ref[k].astype(np.uint8), self.img_size)
            self.cache.put(self._slice_key(volume, k), arrays)
        presence = np.zeros((image.shape[0], 3), dtype=np.float32)
        if ref is not None:
            presence = np.stack([(ref == c).any(axis=(1, 2)) for c in (1, 2, 3)], axis=1).astype(np.float32)
        meta = {"presence": presence, "orig_size": orig}
        self.cache.put(meta_key, meta)  # written last: marks the volume complete
        return meta

    def _load(self, index: int) -> dict[str, np.ndarray]:
        v, k = self.items[index]
        volume = self.volumes[v]
        arrays = self.cache.get(self._slice_key(volume, k))
        if arrays is None:  # entry removed or written by an interrupted run: extract the volume again
            self._prepare(volume, force=True)
            arrays = self.cache.get(self._slice_key(volume, k))
        return arrays
