"""What a prediction runs in: the request, the path it resolves to, and the job's images a path is built on.

A :class:`Request` is what the user asked for (``--precision``, ``--runtime``, ``--compile``, ``--no-optimize``),
checked once, when it is made, against the vocabularies of :mod:`fastmtl.options`. :mod:`fastmtl.inference.resolve`
turns it, with the device, the CPU's facts and the job's size, into an :class:`InferencePath`: a precision (never
``auto``) on a runtime (never ``auto``), compiled or not, for one CPU; :mod:`fastmtl.inference.build` makes that a
runnable module. The path is frozen: ``fastmtl predict``, the bench and the Python API build it and report it as it
is, and nothing after ``resolve`` decides it again.

========  ========================================================================================================
``fp32``  :func:`~inference.optimize.optimize_for_inference`'s model (BN folded, channels_last), optionally compiled
``bf16``  the same under bf16 autocast: CUDA, or a CPU that computes bf16 natively (avx512_bf16 / AMX, as oneDNN
          reports it; emulated bf16 is slower than fp32, so fastmtl refuses it rather than guess)
``fp16``  CUDA only
``int8``  CPU: PT2E static quantization with torchao's x86 Inductor quantizer, calibrated on the user's images;
          convolutions and linears in int8, softmax, norms and the attention arithmetic in fp32; always compiled
========  ========================================================================================================

On a CPU, fp32 and int8 also run on ONNX Runtime (:mod:`inference.onnxrt`), and fp32, bf16 (where native) and int8
on OpenVINO (:mod:`inference.openvino_rt`). What the CPU computes (bf16, VNNI, AMX) comes from
:func:`fastmtl.runtime.cpu_info`, which ``$FASTMTL_CPU`` can set to a simulated CPU kind.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from fastmtl.data.images import ImagePaths
from fastmtl.data.inputs import collect_inputs, sample_batches
from fastmtl.inference import onnxrt, openvino_rt
from fastmtl.options import FILE_RUNTIMES, check_inference
from fastmtl.runtime import CpuInfo

__all__ = [
    "CALIBRATION_IMAGES",
    "CHECK_IMAGES",
    "InferencePath",
    "PrecisionUnavailable",
    "Request",
    "Sample",
    "auto_runtime",
    "path_name",
    "unavailable",
]

CALIBRATION_IMAGES = 32  # what int8 calibrates on, whatever the batch size
CHECK_IMAGES = 32  # the next images: what ``auto`` compares paths with fp32 on (int8 was not calibrated on them)
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": None}


class PrecisionUnavailable(ValueError):
    """The precision cannot run here (no native bf16, no torchao, fp16 on a CPU, ...); the message says why."""


@dataclass(frozen=True)
class Request:
    """What the user asked for; an unknown value, or a combination no path serves, raises ValueError naming the
    value and the choices (:func:`fastmtl.options.check_inference`) when the request is made, before any work.

    Args:
        precision: ``auto``, ``fp32``, ``bf16``, ``fp16`` or ``int8``.
        runtime: ``auto``, ``torch``, ``onnxruntime`` or ``openvino``.
        compile: ``torch.compile`` a torch path (torch's int8 is always compiled).
        optimize: False runs the checkpoint's model as saved (no BN folding, fp32, or bf16 on CUDA for ``auto``).
    """

    precision: str = "auto"
    runtime: str = "auto"
    compile: bool = False
    optimize: bool = True

    def __post_init__(self) -> None:
        check_inference(self.precision, self.runtime, self.compile, self.optimize)


def path_name(precision: str, compile: bool = False, runtime: str = "torch") -> str:
    """The name the bench, ``auto``'s log and ``fastmtl predict`` give a path: ``fp32``, ``fp32+compile``,
    ``int8`` (torchao, always compiled), ``int8+onnxruntime``, ``int8+openvino``, ..."""
    if runtime in FILE_RUNTIMES:
        return f"{precision}+{runtime}"
    return precision + ("+compile" if compile and precision != "int8" else "")


@dataclass(frozen=True)
class InferencePath:
    """One way to run a model, resolved: what :func:`~fastmtl.inference.build.build` builds.

    Args:
        precision: ``fp32``, ``bf16``, ``fp16`` or ``int8`` (the module table).
        runtime: ``torch``, ``onnxruntime`` or ``openvino``.
        compile: a compiled torch path (``torch.compile``, on a CPU with freezing); torch's int8 always is.
        cpu: the CPU it is built for: the int8 recipes (7- or 8-bit weights) and OpenVINO's float precision follow it.
        optimize: False: the checkpoint's model as saved, in ``precision`` (fp32, or bf16 autocast on CUDA).
    """

    precision: str
    runtime: str
    compile: bool
    cpu: CpuInfo
    optimize: bool = True

    @property
    def name(self) -> str:
        return path_name(self.precision, self.compile, self.runtime) + ("" if self.optimize else " (model as saved)")

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype a torch float path runs under (None: fp32)."""
        return _DTYPES[self.precision]

    @property
    def needs_images(self) -> bool:
        """Built on the job's own images: int8 calibrates on them, a compiled path is warmed up at their shape."""
        return self.optimize and (self.precision == "int8" or self.compile)


def auto_runtime(precision: str, device: torch.device) -> str:
    """``runtime="auto"``: for int8 on a CPU, OpenVINO where it is installed, else ONNX Runtime where it is (both
    faster than torchao's int8 where measured, and cached on disk); torch otherwise."""
    if precision != "int8" or device.type != "cpu":
        return "torch"
    return next((name for name, rt in (("openvino", openvino_rt), ("onnxruntime", onnxrt)) if rt.missing() is None),
                "torch")  # fmt: skip


def unavailable(path: InferencePath, device: torch.device) -> str | None:
    """Why ``path`` cannot run on ``device`` (None: it can): a precision the device or runtime does not compute,
    or a runtime or package that is not installed."""
    precision, runtime = path.precision, path.runtime
    if runtime == "onnxruntime":
        if device.type != "cpu" or precision not in ("fp32", "int8"):
            return f"ONNX Runtime runs fp32 and int8 on a CPU, not {precision} on {device}"
        return onnxrt.missing()
    if runtime == "openvino":
        if device.type != "cpu" or precision not in ("fp32", "bf16", "int8"):
            return f"OpenVINO runs fp32, bf16 and int8 on a CPU, not {precision} on {device}"
        if openvino_rt.missing():
            return openvino_rt.missing()
    if precision == "fp16" and device.type != "cuda":
        return "fp16 runs on CUDA only; on a CPU use fp32, bf16 (where native) or int8"
    if precision == "int8" and device.type != "cpu":
        return "int8 is a CPU path; on CUDA use bf16 or fp16"
    if precision == "bf16" and device.type == "cpu" and not path.cpu.bf16:  # on torch and OpenVINO alike
        return (f"this CPU ({path.cpu.name}, {path.cpu.isa}) has no native bf16 (avx512_bf16 or AMX): emulated bf16 "
                "is slower than fp32; use fp32 or int8")  # fmt: skip
    if precision == "int8" and runtime == "torch" and importlib.util.find_spec("torchao") is None:
        return "int8 on torch needs torchao: pip install 'fastmtl[int8]' (or 'fastmtl[export]' for ONNX Runtime's int8)"
    return None


class Sample:
    """The job's images a path is built on, in batches of the job's batch size: int8 calibrates on them, a compiled
    path is warmed up on them and ``auto`` measures on them. Read once, when first needed.

    Args:
        shape: the job's batch shape (B, C, H, W); an uncompiled float path is built on zeros of it.
        read: returns up to ``n`` images in batches of B (fewer when files do not read; none when none does).
        refresh: calibrate ONNX Runtime's and OpenVINO's cached int8 files anew on these images (``--calibrate``);
            False reuses a cached file (calibrated by the job that built it).
        device: where the zeros of an uncompiled path go (the model's device).
        read_held_out: returns :attr:`held_out` (default: the images ``read`` gives after :attr:`batches`).

    ``built`` holds paths already built on this sample: ``auto``'s measurement keeps the one it chose there, and
    :func:`~fastmtl.inference.build.build` returns it rather than building it twice.
    """

    def __init__(self, shape: Sequence[int], read: Callable[[int], list[torch.Tensor]], *, refresh: bool = False,
                 device: torch.device | str = "cpu",
                 read_held_out: Callable[[], list[torch.Tensor]] | None = None) -> None:  # fmt: skip
        self.shape, self.refresh, self.device = tuple(shape), refresh, torch.device(device)
        self._read, self._batches, self._held_out = read, None, None
        self._read_held_out = read_held_out or (lambda: read(CALIBRATION_IMAGES + CHECK_IMAGES)[len(self.batches) :])
        self.built: dict[InferencePath, nn.Module] = {}

    @classmethod
    def of(cls, batches: list[torch.Tensor], *, held_out: Sequence[torch.Tensor] = (), refresh: bool = False) -> Sample:
        """A sample of batches already in memory (the first one's shape is the job's), and ``held_out`` ones for
        :attr:`held_out`."""
        return cls(batches[0].shape, lambda n: list(batches), refresh=refresh, device=batches[0].device,
                   read_held_out=lambda: list(held_out))  # fmt: skip

    @classmethod
    def from_images(cls, dataset: ImagePaths, batch_size: int, calibrate: Any = None, *,
                    device: torch.device | str = "cpu") -> Sample:  # fmt: skip
        """The first readable images of ``dataset`` (a prediction's inputs) or of ``calibrate`` (anything
        :func:`~fastmtl.data.inputs.collect_inputs` takes; it also refreshes cached int8 files)."""
        source = dataset if calibrate is None else ImagePaths(collect_inputs(calibrate), dataset.size,
                                                              dataset.normalize, dataset.in_chans)  # fmt: skip
        shape = (batch_size, dataset.in_chans, *dataset.size)
        own = None  # held out: the images after the calibration ones; with --calibrate, the job's first
        if calibrate is not None:
            own = lambda: sample_batches(dataset, batch_size, -(-CHECK_IMAGES // batch_size), device)  # noqa: E731
        return cls(shape, lambda n: sample_batches(source, batch_size, -(-n // batch_size), device),
                   refresh=calibrate is not None, device=device, read_held_out=own)  # fmt: skip

    @property
    def batches(self) -> list[torch.Tensor]:
        """Up to :data:`CALIBRATION_IMAGES` of the job's images (empty when none reads)."""
        if self._batches is None:
            self._batches = self._read(CALIBRATION_IMAGES)
        return self._batches

    @property
    def held_out(self) -> list[torch.Tensor]:
        """Up to :data:`CHECK_IMAGES` of the job's images that int8 is not calibrated on (those after
        :attr:`batches`; with ``--calibrate`` images, the job's first): ``auto`` compares its paths with fp32 there
        (read when first asked; empty when the job has no more)."""
        if self._held_out is None:
            self._held_out = self._read_held_out()
        return self._held_out

    def example(self, path: InferencePath) -> torch.Tensor:
        """The batch ``path`` is built at: the first of the job's images where it needs them, else zeros."""
        return self.batches[0] if path.needs_images else torch.zeros(self.shape, device=self.device)
