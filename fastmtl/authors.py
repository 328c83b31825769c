"""Drop-in loading of the authors' ResFormer-MTL checkpoints (github.com/nguyenpbui/ResFormer, commit ce6948b).

The authors save ``DataParallel(Res34_Swin_MS(...)).state_dict()``: every key carries a ``module.`` prefix, the
ResNet-34 sits at the top level, and the serial model (``ResFormer_MTL.py``) adds the DFE modules ``fem1..fem4``
(class ``FEM_4``) that the parallel one (``ResFormer_MTL_Parallel.py``) lacks. Authors' key -> fastmtl key:

    conv1, bn1, layer{1-4}.*                -> encoder.trunk.*  (torchvision names on both sides)
    patch_embed.{projs.i, eca.conv, norm}   -> encoder.patch_embed.*  (projs 0..3: kernels 2/4/8/16, 32/16/8/8 ch)
    MS{2,3,4}.{norm, eca.conv}              -> encoder.patch_merges.{0,1,2}.*
    MS{k}.reductions.{0,1}.0                -> encoder.patch_merges.{k-2}.{reduce2, reduce4}
    swin_layers.i.blocks.j.*                -> encoder.swin_stages.i.blocks.j.*  (same names inside a block)
    fem{k}.conv{1,2,3,4}.conv.{0,1}         -> decoder.dfe.{k-1}.branches.{0,1,2,3}.{conv, bn}  (1x1, dil 6/12/18)
    fem{k}.conv5 | conv6 .conv.{0,1}        -> decoder.dfe.{k-1}.merge | shortcut .{conv, bn}
    fem{k}.sa.conv1                         -> decoder.dfe.{k-1}.attention.conv
    decode{4,3,2}.up                        -> decoder.blocks.{0,1,2}.up
    decode{4,3,2}.conv_bn_relu.{0,1}        -> decoder.blocks.{0,1,2}.{conv, bn}
    decode0.1                               -> decoder.head.1
    cls_conv_3.0 | cls_conv_2.0             -> cls_head.pools.0.0 | cls_head.pools.1.0  (e3 then e2, as concatenated)
    fc1, fc2                                -> cls_head.fc1, cls_head.fc2

No tensor changes layout: the authors' spatial attention (``Dec_SA``) stacks [mean, max] as ours does, their
relative position index is ours, and every concatenation keeps its order. The Swin buffers
``attn.relative_position_index`` and ``attn_mask`` are compared with what fastmtl computes and dropped. Models are
built with ``eca_layout="authors"``: the authors' MLP applies its ECA gate to token memory viewed without a
transpose, and their weights were trained with that.

Serial and parallel fusion have identical keys, so a checkpoint cannot tell them apart. One with ``fem*`` keys is
taken for the serial model (the authors' only model with DFE), one without for ``resformer_mtl_nodfe`` (their
parallel model); ``variant="resformer_mtl"`` loads DFE weights into parallel fusion.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fastmtl.layers.swin import relative_position_index, seam_mask
from fastmtl.registry import create_model

VARIANTS = ("resformer_mtl_serial", "resformer_mtl_nodfe", "resformer_mtl")

_CONV_BN = ("conv", "bn")
_FEM_PARTS = {"1": "branches.0", "2": "branches.1", "3": "branches.2", "4": "branches.3", "5": "merge", "6": "shortcut"}

# (authors' key pattern, fastmtl key); patterns must match the whole key; the first matching rule wins.
_RULES: tuple[tuple[re.Pattern, Callable[[re.Match], str]], ...] = tuple(
    (re.compile(pattern), target)
    for pattern, target in (
        (r"(conv1\.weight|bn1\..+|layer[1-4]\..+)", lambda m: f"encoder.trunk.{m[1]}"),
        (r"patch_embed\.(.+)", lambda m: f"encoder.patch_embed.{m[1]}"),
        (
            r"MS([2-4])\.reductions\.([01])\.0\.(.+)",
            lambda m: f"encoder.patch_merges.{int(m[1]) - 2}.{('reduce2', 'reduce4')[int(m[2])]}.{m[3]}",
        ),
        (r"MS([2-4])\.((norm|eca\.conv)\..+)", lambda m: f"encoder.patch_merges.{int(m[1]) - 2}.{m[2]}"),
        (r"swin_layers\.(\d+)\.(blocks\..+)", lambda m: f"encoder.swin_stages.{m[1]}.{m[2]}"),
        (
            r"fem([1-4])\.conv([1-6])\.conv\.([01])\.(.+)",
            lambda m: f"decoder.dfe.{int(m[1]) - 1}.{_FEM_PARTS[m[2]]}.{_CONV_BN[int(m[3])]}.{m[4]}",
        ),
        (r"fem([1-4])\.sa\.conv1\.weight", lambda m: f"decoder.dfe.{int(m[1]) - 1}.attention.conv.weight"),
        (r"decode([2-4])\.up\.(.+)", lambda m: f"decoder.blocks.{4 - int(m[1])}.up.{m[2]}"),
        (
            r"decode([2-4])\.conv_bn_relu\.([01])\.(.+)",
            lambda m: f"decoder.blocks.{4 - int(m[1])}.{_CONV_BN[int(m[2])]}.{m[3]}",
        ),
        (r"decode0\.1\.weight", lambda m: "decoder.head.1.weight"),
        (r"cls_conv_([23])\.0\.(.+)", lambda m: f"cls_head.pools.{3 - int(m[1])}.0.{m[2]}"),
        (r"fc([12])\.(weight|bias)", lambda m: f"cls_head.fc{m[1]}.{m[2]}"),
    )
)
# Buffers the authors store and fastmtl computes from the window layout.
_COMPUTED = re.compile(r"swin_layers\.(\d+)\.blocks\.(\d+)\.(attn\.relative_position_index|attn_mask)")


def map_authors_key(key: str) -> str | None:
    """The fastmtl state_dict key for one authors' key (``module.`` already stripped), or None if no rule fits."""
    for pattern, target in _RULES:
        match = pattern.fullmatch(key)
        if match:
            return target(match)
    return None


def _listing(title: str, items: list[str], limit: int = 20) -> list[str]:
    if not items:
        return []
    more = [f"    ... and {len(items) - limit} more"] if len(items) > limit else []
    return [f"  {title} ({len(items)}):"] + [f"    {item}" for item in items[:limit]] + more


@dataclass
class AuthorsLoadReport:
    """What :func:`from_authors_state_dict` did with each key.

    Attributes:
        variant: the fastmtl model that was built.
        loaded: authors' key -> fastmtl key, for every tensor copied.
        ignored: authors' buffers fastmtl computes itself (relative position index, shifted-window mask).
        unplaced: authors' key -> why it could not be placed (no rule, no such key in the model, shape).
        missing: fastmtl keys the checkpoint did not fill (left at their initial values).
    """

    variant: str
    loaded: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    unplaced: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every authors' key was placed or ignored and every model key was filled."""
        return not self.unplaced and not self.missing

    def __str__(self) -> str:
        lines = [
            f"authors' checkpoint -> {self.variant}: {len(self.loaded)} loaded, {len(self.ignored)} ignored "
            f"(computed buffers), {len(self.unplaced)} unplaced, {len(self.missing)} missing"
        ]
        lines += _listing("unplaced", [f"{k}: {why}" for k, why in self.unplaced.items()])
        lines += _listing("missing", self.missing)
        return "\n".join(lines)


def _infer_options(source: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """img_size from a relative position table ((2w-1)^2 rows, w = img_size / 16) and class counts from shapes."""
    options = {}
    table = next((v for k, v in source.items() if k.endswith("attn.relative_position_bias_table")), None)
    if table is not None:
        side = math.isqrt(table.shape[0])
        if side * side != table.shape[0] or side % 2 == 0:
            raise ValueError(f"relative position table has {table.shape[0]} rows, not (2w-1)^2 for a window side w")
        options["img_size"] = 16 * (side + 1) // 2
    for name, key, dim in (("seg_classes", "decode0.1.weight", 0), ("cls_classes", "fc2.weight", 0)):
        if key in source:
            options[name] = int(source[key].shape[dim])
    if "conv1.weight" in source:
        options["in_chans"] = int(source["conv1.weight"].shape[1])
    return options


def _check_computed(match: re.Match, value: torch.Tensor, img_size: int) -> str | None:
    """None when a stored Swin buffer equals the one fastmtl computes, else why it does not."""
    stage, block, name = int(match[1]), int(match[2]), match[3]
    window = img_size // 16
    if name == "attn_mask":
        side = img_size // 2 ** (stage + 1)
        if block % 2 == 0 or side <= window:
            return f"attn_mask stored for a block that fastmtl does not shift (img_size {img_size})"
        expected = seam_mask(side, side, window, window // 2)
    else:
        expected = relative_position_index(window)
    if value.shape != expected.shape or not torch.equal(value.to(expected.dtype), expected):
        return f"differs from the {name} fastmtl computes for window side {window}"
    return None


def _place(source: Mapping[str, Any], model: nn.Module, variant: str) -> AuthorsLoadReport:
    """Maps, checks and copies every source tensor into ``model``; returns the report."""
    own, update = model.state_dict(), {}
    report = AuthorsLoadReport(variant)
    for key, value in source.items():
        computed = _COMPUTED.fullmatch(key)
        target = None if computed else map_authors_key(key)
        if not isinstance(value, torch.Tensor):
            why = f"not a tensor ({type(value).__name__})"
        elif computed:
            why = _check_computed(computed, value, model.config.img_size)
            if why is None:
                report.ignored.append(key)
                continue
        elif target is None:
            why = "no mapping rule"
        elif target not in own:
            why = f"maps to {target}, which {variant} does not have"
        elif own[target].shape != value.shape:
            why = f"shape {tuple(value.shape)}, but {target} is {tuple(own[target].shape)}"
        else:
            update[target] = value
            report.loaded[key] = target
            continue
        report.unplaced[key] = why
    report.missing = [k for k in own if k not in update]
    model.load_state_dict(update, strict=False)
    return report


def from_authors_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    variant: str | None = None,
    img_size: int | None = None,
    seg_classes: int | None = None,
    cls_classes: int | None = None,
    strict: bool = False,
    **overrides: Any,
) -> tuple[nn.Module, AuthorsLoadReport]:
    """Builds the fastmtl model matching an authors' state_dict and loads it.

    Args:
        state_dict: ``Res34_Swin_MS`` weights; ``module.`` prefixes (DataParallel) are stripped.
        variant: fastmtl model to build, one of :data:`VARIANTS`; default: ``resformer_mtl_serial`` when the keys
            hold DFE modules (``fem*``), else ``resformer_mtl_nodfe``.
        img_size: default: inferred from the relative position bias table.
        seg_classes: default: inferred from the final 1x1 convolution (``decode0.1.weight``).
        cls_classes: default: inferred from ``fc2.weight``.
        strict: raise instead of returning a partly loaded model.
        **overrides: further model options (e.g. ``kernels``, ``drop_path_rate``); ``eca_layout`` defaults to
            ``"authors"``.

    Returns:
        ``(model, report)``; the model is in training mode, as :func:`fastmtl.create_model` returns it.

    Raises:
        ValueError: unknown variant, img_size neither given nor inferable, or (``strict``) any unplaced or
            missing key.
    """
    source = {k.removeprefix("module."): v for k, v in state_dict.items()}
    options = _infer_options(source)
    given = {"img_size": img_size, "seg_classes": seg_classes, "cls_classes": cls_classes}
    options.update({k: v for k, v in given.items() if v is not None})
    if "img_size" not in options:
        raise ValueError("no relative_position_bias_table in the state_dict to infer img_size from; pass img_size=")
    if variant is None:
        variant = VARIANTS[0] if any(k.startswith("fem") for k in source) else VARIANTS[1]
    elif variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
    model = create_model(variant, **{"eca_layout": "authors", **options, **overrides})
    report = _place(source, model, variant)
    if strict and not report.complete:
        raise ValueError(f"the state_dict does not fit {variant} exactly:\n{report}")
    return model, report


def load_authors_checkpoint(path: str | os.PathLike, **kwargs: Any) -> tuple[nn.Module, AuthorsLoadReport]:
    """Reads an authors' ``.pth``/``.pt`` file and loads it with :func:`from_authors_state_dict`.

    The file is read with ``torch.load(..., map_location="cpu", weights_only=True)``, so no pickled code runs.
    A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper and ``module.`` prefixes are removed.

    Args:
        path: checkpoint file (``.safetensors`` works too).
        **kwargs: see :func:`from_authors_state_dict`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a tensor-only state_dict, or as :func:`from_authors_state_dict`.
    """
    from fastmtl.weights import read_state_dict

    return from_authors_state_dict(read_state_dict(path), **kwargs)
