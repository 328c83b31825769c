"""Vocabularies and rules that need no PyTorch: the command line checks them before importing it, and the library
uses the same ones, so each rule has one home.

- :data:`DATA_KINDS`: the dataset kinds (:mod:`fastmtl.data.registry` maps each to its class);
- :func:`require`: an optional package an operation needs, named with the extra that installs it;
- the input sizes a model takes: :func:`input_step` (every model's sides are multiples of the encoder's stride,
  16; a ResFormer's, built with a Swin window of ``img_size // 16``, multiples of ``img_size``) and
  :func:`check_input_side`, which says which sizes a checkpoint takes.
"""

from __future__ import annotations

import importlib.util

__all__ = [
    "DATA_KINDS",
    "ENCODER_STRIDE",
    "MAX_IMG_SIZE",
    "WINDOWED_MODELS",
    "check_input_side",
    "check_kind",
    "input_step",
    "require",
    "window_step",
]

DATA_KINDS = ("isic2017", "retouch", "oct", "folder", "synthetic")
ENCODER_STRIDE = 16  # the encoders' total downsampling: every input side is a multiple of it
MAX_IMG_SIZE = 8192
# The registered models with Swin windows; the baselines and models registered elsewhere have none here (a model
# of your own checks its input itself when it runs).
WINDOWED_MODELS = ("resformer_mtl", "resformer_mtl_serial", "resformer_mtl_nodfe")


def check_kind(kind: str) -> str:
    """``kind`` if it is a dataset kind or ``"auto"``; else a ValueError listing the kinds."""
    if kind != "auto" and kind not in DATA_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; valid kinds: {', '.join(DATA_KINDS)} (or 'auto')")
    return kind


def require(*modules: str, what: str, extra: str = "export") -> None:
    """Raises ModuleNotFoundError naming the ``modules`` that are not installed, what needs them and the extra that
    installs them (found without importing them)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ModuleNotFoundError(
            f"{what} needs {', '.join(missing)}: pip install {' '.join(missing)} (or pip install 'fastmtl[{extra}]')"
        )


def window_step(window: int) -> int:
    """A Swin encoder built with window side ``window`` takes input sides that are multiples of ``16 * window``:
    its last stage's token map (H/16 x W/16) must tile into whole windows, and so must the earlier ones."""
    return ENCODER_STRIDE * window


def input_step(model: str, img_size: int) -> int:
    """The input sides the registered ``model`` built for ``img_size`` takes are the multiples of this."""
    return window_step(img_size // ENCODER_STRIDE) if model in WINDOWED_MODELS else ENCODER_STRIDE


def check_input_side(side: int, model: str, img_size: int, source: str) -> None:
    """Raises ValueError when ``side`` (an ``--img-size``) is not one that ``model`` built for ``img_size`` (the
    checkpoint ``source``) takes; the message lists the sizes it does take."""
    step = input_step(model, img_size)
    if 0 < side <= MAX_IMG_SIZE and side % step == 0:
        return
    sizes = ", ".join(str(step * k) for k in range(1, 5) if step * k <= MAX_IMG_SIZE)
    why = f" (its Swin windows are {img_size // ENCODER_STRIDE} tokens wide)" if model in WINDOWED_MODELS else ""
    raise ValueError(
        f"--img-size {side} does not fit checkpoint {source}: its {model} was built for {img_size} px{why} and takes "
        f"sides that are multiples of {step} up to {MAX_IMG_SIZE}: {sizes}, ..."
    )
