"""Model configuration: one frozen dataclass, saved inside every checkpoint so a model can be rebuilt."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fastmtl.backend import default_backend
from fastmtl.options import MIN_MODEL_IMG_SIZE, check_backend, check_img_size

DEFAULT_DILATIONS = (6, 12, 18)  # the DFE's dilated branches (SPEC.md section 2)
_CHOICES = {
    "fusion": ("parallel", "serial"),
    "dfe": ("four", "three", "none"),
    "cls_head": ("multiscale", "single", "none"),
    "eca_layout": ("transpose", "authors"),
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a registered model.

    Attributes:
        name: registered model name.
        img_size: nominal input side; sets the Swin window side (img_size // 16). A multiple of 16 from 32 to 8192
            (:func:`fastmtl.options.check_img_size`).
        in_chans: image channels.
        seg_classes: 1 for binary segmentation (sigmoid), else the number of classes incl. background (softmax).
        cls_classes: number of multi-label classification outputs.
        dilations: dilation rates of the DFE's dilated branches.
        drop_path_rate: stochastic depth at the last Swin block (linear from 0 over the 8 blocks).
        fusion: "parallel" (conv + Swin summed per stage) or "serial" (Swin after conv + patch merge).
        dfe: "four" (authors' module), "three" (paper's text) or "none".
        cls_head: "multiscale" (e3 and e2, the paper's), "single" (e3 only) or "none".
        eca_layout: "transpose" (correct) or "authors" (reproduces the original token scramble in the MLP).
        kernels: "reference", "triton" or "auto".
    """

    name: str
    img_size: int = 224
    in_chans: int = 3
    seg_classes: int = 1
    cls_classes: int = 3
    dilations: tuple[int, ...] = DEFAULT_DILATIONS
    drop_path_rate: float = 0.1
    fusion: str = "parallel"
    dfe: str = "four"
    cls_head: str = "multiscale"
    eca_layout: str = "transpose"
    kernels: str = field(default_factory=default_backend)  # "auto" unless inside fastmtl.kernel_backend(...)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        for key, valid in _CHOICES.items():
            if getattr(self, key) not in valid:
                raise ValueError(f"{key}={getattr(self, key)!r} is not valid; expected one of {', '.join(valid)}")
        check_backend(self.kernels)
        check_img_size(self.img_size, "img_size", MIN_MODEL_IMG_SIZE)
        for key in ("in_chans", "seg_classes", "cls_classes"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be a positive int, got {getattr(self, key)}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    @property
    def window(self) -> int:
        """Swin window side."""
        return self.img_size // 16

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["dilations"] = list(self.dilations)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise a ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; valid keys: {sorted(names)}")
        return cls(**d)


CONFIG_OPTIONS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name not in ("name", "extra"))
