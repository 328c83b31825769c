"""ONNX Runtime paths for CPU inference: fp32, and static int8 calibrated on the user's images.

The model is exported once per weights and input size (``torch.onnx.export(dynamo=True)`` of the BN-folded model
with reference layers, batch dynamic), quantized once for int8, and both files are cached under
``$FASTMTL_CACHE/onnx``, named by a hash of the weights, the model config, the input size and the library
versions. A later process loads the cached file into an ONNX Runtime session in under a second, which is what
Inductor's frozen graphs cannot do (:mod:`inference.precision`): this is the compile-once path. Each file's SHA-256
is recorded beside it when written (``<name>.onnx.sha256``) and checked whenever it is loaded: a file truncated
or altered on disk (which may still load, with other weights) is built again with one printed line.

int8 is ONNX Runtime's static QDQ quantization: convolutions and the linear layers' matmuls in int8 (weights per
output channel, activations uint8 per tensor, min/max calibration); the linear layers return fp32 (ONNX Runtime
fuses them into ``MatMulIntegerToFloat``), so GELU and the residual adds read them without a dequantize. Everything
else stays fp32: the attention arithmetic (the two matmuls of activations, q @ k^T and attn @ v, the position
bias and mask adds, softmax), LayerNorm and GELU, the convolutions that read the raw pixels (ResNet stem, Swin
patch embedding) and the operators that produce the outputs (the segmentation head's last convolution, the
classifier). Quantizing the attention matmuls too, with every matmul's output quantized, took 3.95 s of kernel
time per batch of 8 at 224 px against 3.09 s (ONNX Runtime's profile: the 196 x 196 scores of each window are
dequantized before the bias add; 4-7 % fewer images/s in wall-clock runs) and moved the class probabilities twice
as far from fp32 (mean change 0.0025 against 0.0012; trained weights, 48 ISIC images).

On a CPU without VNNI the weights use 7 bits (``reduce_range``): AVX2's ``vpmaddubsw`` sums pairs of uint8 x int8
products into int16 and saturates with 8-bit weights (measured on a 2-core AVX2 EPYC at 224 px batch 8, random
weights: mask DSC against fp32 98.5 % with 8 bits, 99.6 % with 7, at the same speed).

The calibration of a cached int8 file is that of the job that built it; ``refresh=True`` (``fastmtl predict
--calibrate``) builds it again from the given images.

The folder is bounded: after a file is written, the least recently used ones are deleted until the folder holds at
most ``$FASTMTL_ONNX_CACHE_GB`` (default 2 GB: about seven fp32 + int8 pairs of resformer_mtl); the files of the
running job are never deleted, and a deleted file is exported again when a later job needs it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from fastmtl.data.cache import default_cache_dir
from fastmtl.files import atomic_write_bytes, file_sha256, replacing
from fastmtl.output import MTLOutput

__all__ = [
    "OnnxRuntimeModel",
    "build",
    "cache_limit_bytes",
    "cached_file",
    "exported_fp32",
    "missing",
    "quantize",
    "seal",
    "verify_cached",
    "weights_digest",
]

_NEEDS = ("onnx", "onnxscript", "onnxruntime")
_INT8 = "int8r2"  # the int8 files' name; a new name when quantize() changes, so older cached files are not reused
_LIMIT_GB = 2.0  # the cache folder's default bound ($FASTMTL_ONNX_CACHE_GB)


def missing() -> str | None:
    """None when ONNX Runtime paths can run here, else what to install."""
    absent = [m for m in _NEEDS if importlib.util.find_spec(m) is None]
    return f"ONNX Runtime paths need {', '.join(absent)}: pip install 'fastmtl[export]'" if absent else None


def cached_file(model: nn.Module, shape: Sequence[int], precision: str, *, digest: str | None = None) -> Path:
    """Where the ONNX file of ``model`` for inputs of ``shape`` (B, C, H, W; any B) in ``precision`` is cached:
    named by the config, the image size, the precision and :func:`weights_digest` (pass ``digest`` when known:
    hashing 225 MB of weights takes about a second)."""
    from fastmtl.checkpoint.store import model_config

    size = f"{shape[-2]}x{shape[-1]}"
    return default_cache_dir() / "onnx" / \
        f"{model_config(model).name}-{size}-{precision}-{digest or weights_digest(model, shape)}.onnx"  # fmt: skip


def weights_digest(model: nn.Module, shape: Sequence[int]) -> str:
    """A hash of the weights, the config, the input's channels and size and the torch / ONNX Runtime versions."""
    import onnxruntime

    from fastmtl.checkpoint.store import model_config

    digest = hashlib.blake2b(digest_size=12)
    config = {k: v for k, v in model_config(model).to_dict().items() if k != "kernels"}
    digest.update(json.dumps([config, list(shape[1:]), torch.__version__, onnxruntime.__version__]).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def exported_fp32(
    model: nn.Module, example: torch.Tensor, *, digest: str | None = None, log: Callable[[str], None] = print
) -> Path:
    """The cached fp32 ONNX file of ``model`` at ``example``'s image size, exported now when absent (what OpenVINO
    reads too: :mod:`fastmtl.inference.openvino_rt`)."""
    fp32 = cached_file(model, example.shape, "fp32", digest=digest)
    if not fp32.is_file():
        start = time.perf_counter()
        _export_fp32(model, example, fp32)
        log(f"onnxruntime: exported to {fp32} in {time.perf_counter() - start:.0f} s (cached for later jobs)")
        _bound_cache(fp32.parent, keep={fp32}, log=log)
    return fp32


def _export_fp32(model: nn.Module, example: torch.Tensor, out: Path) -> None:
    from fastmtl.inference.traced import batch_dim, deployable, output_names, write_onnx

    names = output_names(model, example)
    trace = example if example.shape[0] >= 2 else example.expand(2, *example.shape[1:])
    write_onnx(deployable(model), trace.contiguous(), out, batch_dim(True), names, {"outputs": ",".join(names)})


def _fp32_nodes(graph) -> list[str]:
    """Names of the compute nodes that stay fp32: those that read the image (ResNet stem, Swin patch embedding),
    the matmuls of two activations (attention's q @ k^T and attn @ v), and the last Conv/Gemm/MatMul on each
    output's path (walking back through reshapes, resizes and activations)."""
    compute = {"Conv", "Gemm", "MatMul", "ConvTranspose"}
    producer = {out: node for node in graph.node for out in node.output}
    inputs = {i.name for i in graph.input}
    weights = {i.name for i in graph.initializer}
    keep = [node.name for node in graph.node if node.op_type in compute and inputs & set(node.input)]
    keep += [node.name for node in graph.node if node.op_type == "MatMul" and not weights & set(node.input)]
    for output in graph.output:
        node = producer.get(output.name)
        while node is not None and node.op_type not in compute:
            node = next((producer[i] for i in node.input if i in producer), None)
        if node is not None:
            keep.append(node.name)
    return keep


def quantize(fp32: Path, out: Path, calibration: list[torch.Tensor], reduce_range: bool = True) -> None:
    """Writes ``out``: the fp32 ONNX file ``fp32`` with static int8 QDQ quantization calibrated on ``calibration``
    (see the module docstring; ``reduce_range``: 7-bit weights, for CPUs without VNNI). Metadata is kept."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch.detach().cpu().float().contiguous().numpy()}

    with tempfile.TemporaryDirectory(prefix="fastmtl-quant-") as work:
        prepared = Path(work) / "prepared.onnx"
        # Symbolic shape inference fails on the exporter's Concat of dynamic shapes; ONNX's own inference suffices.
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        source = onnx.load(str(fp32), load_external_data=False)
        keep = _fp32_nodes(onnx.load(str(prepared)).graph)
        with replacing(out) as tmp:
            quantize_static(str(prepared), tmp, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                            nodes_to_exclude=keep, calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]})  # fmt: skip
            quantized = onnx.load(tmp)
            metadata = {prop.key: prop.value for prop in source.metadata_props}
            onnx.helper.set_model_props(quantized, {**metadata, "precision": "int8"})
            onnx.save(quantized, tmp)


class OnnxRuntimeModel(nn.Module):
    """An ONNX file run by ONNX Runtime's CPU provider, called like a fastmtl model: ``(B, C, H, W) -> MTLOutput``.

    Args:
        path: the ``.onnx`` file; its outputs are named ``seg_logits`` and / or ``cls_logits``.
        threads: ONNX Runtime's intra-op threads (default ``torch.get_num_threads()``, which fastmtl fits to the
            idle cores; see :func:`fastmtl.runtime.fit_threads`).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        # Idle pool threads sleep rather than spin, leaving the core to the image decoding between batches and to
        # other jobs; it costs ONNX Runtime 1.5 % of its own speed (224 px, batch 8, 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.names = [o.name for o in self.session.get_outputs()]

    def forward(self, x: torch.Tensor) -> MTLOutput:
        arrays = self.session.run(None, {self.input: np.ascontiguousarray(x.detach().cpu().float().numpy())})
        found = {name: torch.from_numpy(a) for name, a in zip(self.names, arrays, strict=True)}
        return MTLOutput(found.get("seg_logits"), found.get("cls_logits"))


def build(
    model: nn.Module,
    precision: str,
    example: torch.Tensor,
    *,
    calibration: list[torch.Tensor] | None = None,
    refresh: bool = False,
    int8_vnni: bool = False,
    log: Callable[[str], None] = print,
) -> OnnxRuntimeModel:
    """``model`` on ONNX Runtime in ``precision`` (``fp32`` or ``int8``), from the cache or exported now; the path
    was checked by :func:`fastmtl.inference.resolve.resolve` (:func:`fastmtl.inference.path.unavailable`).

    Args:
        model: a fastmtl model on the CPU.
        precision: ``fp32`` or ``int8``.
        example: a batch at the job's image size (any batch size runs).
        calibration: int8's calibration batches (default ``[example]``).
        refresh: rebuild the int8 file from ``calibration`` even when one is cached.
        int8_vnni: the CPU has VNNI, so int8 weights use all 8 bits (module docstring).
        log: where lines about exporting and quantizing go.
    """
    cache_limit_bytes()  # a malformed $FASTMTL_ONNX_CACHE_GB fails now, not after a minute of exporting
    digest = weights_digest(model, example.shape)
    fp32 = cached_file(model, example.shape, "fp32", digest=digest)

    def export() -> None:
        start = time.perf_counter()
        _export_fp32(model, example, fp32)
        seal(fp32)
        log(f"onnxruntime: exported to {fp32} in {time.perf_counter() - start:.0f} s (cached for later jobs)")

    if not fp32.is_file():
        export()
        _bound_cache(fp32.parent, keep={fp32}, log=log)
    if precision == "fp32":
        return _load(fp32, export, log)
    int8 = cached_file(model, example.shape, f"{_INT8}-vnni" if int8_vnni else _INT8, digest=digest)
    batches = calibration or [example]

    def calibrate() -> None:
        start = time.perf_counter()
        if not fp32.is_file():
            export()
        quantize(fp32, int8, batches, reduce_range=not int8_vnni)
        seal(int8)
        log(f"onnxruntime: int8 calibrated on {sum(b.shape[0] for b in batches)} image(s) in "
            f"{time.perf_counter() - start:.0f} s, cached as {int8}")  # fmt: skip
        _remove_older_recipes(int8)
        _bound_cache(int8.parent, keep={fp32, int8}, log=log)

    if refresh or not int8.is_file():
        calibrate()
    return _load(int8, calibrate, log)


def _remove_older_recipes(int8: Path) -> None:
    """Deletes the cached int8 files of the same model, size and weights that an older :func:`quantize` wrote
    (named ``int8`` or ``int8r<N>`` other than the current recipe's, with or without ``-vnni``): nothing reads them."""
    stem, digest = int8.stem.rsplit("-", 1)
    prefix = stem[: stem.rindex(f"-{_INT8}")]
    for old in int8.parent.glob(f"{prefix}-int8*-{digest}.onnx"):
        recipe = old.stem[len(prefix) + 1 : -len(digest) - 1].removesuffix("-vnni")
        if recipe != _INT8 and re.fullmatch(r"int8(r\d+)?", recipe):
            _remove(old)


def cache_limit_bytes() -> int:
    """The ONNX cache folder's bound: ``$FASTMTL_ONNX_CACHE_GB`` gigabytes (default 2; 0 keeps only the running job's
    files)."""
    raw = os.environ.get("FASTMTL_ONNX_CACHE_GB", "").strip()
    try:
        gb = float(raw) if raw else _LIMIT_GB
    except ValueError:
        gb = -1.0
    if not gb >= 0:  # also NaN
        raise ValueError(f"FASTMTL_ONNX_CACHE_GB={raw!r}: expected a size in gigabytes >= 0, like 2 or 0.5")
    return int(gb * 1e9)


def _bound_cache(
    folder: Path, keep: set[Path], log: Callable[[str], None], pattern: str = "*.onnx", runtime: str = "onnxruntime"
) -> None:
    """Deletes the least recently used ``pattern`` files of ``folder`` (use = load or write time, the files' mtime)
    until it holds at most :func:`cache_limit_bytes`; ``keep`` (the running job's files) are never deleted."""
    limit = cache_limit_bytes()
    files = []
    for path in folder.glob(pattern):
        try:
            stat = path.stat()
        except FileNotFoundError:  # deleted by another job meanwhile
            continue
        files.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in files)
    removed = []
    for _, size, path in sorted(files):
        if total <= limit:
            break
        if path in keep:
            continue
        _remove(path)
        total -= size
        removed.append(path.name)
    if removed:
        log(f"{runtime}: the cache {folder} holds at most {limit / 1e9:g} GB ($FASTMTL_ONNX_CACHE_GB); removed the "
            f"least recently used {', '.join(removed)}")  # fmt: skip


def _checksum_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def seal(path: Path) -> None:
    """Records the SHA-256 of a cached file just written beside it (``<name>.sha256``), for :func:`verify_cached`."""
    atomic_write_bytes(_checksum_file(path), f"{file_sha256(path)}  {path.name}\n".encode())


def verify_cached(path: Path) -> str | None:
    """Why the cached file ``path`` cannot be trusted (None: its bytes are those :func:`seal` recorded). A file
    altered on disk may still load, with other weights: its name's weights digest says what it should hold, the
    recorded checksum whether it still does (about 0.2 s for a 225 MB file)."""
    try:
        recorded = _checksum_file(path).read_text().split()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        return f"no readable checksum {_checksum_file(path).name} beside it"
    if file_sha256(path) != recorded:
        return "its bytes differ from the checksum recorded when it was written: truncated or altered"
    return None


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    _checksum_file(path).unlink(missing_ok=True)


def _load(path: Path, rebuild: Callable[[], None], log: Callable[[str], None]) -> OnnxRuntimeModel:
    """The session of a cached file (its mtime set to now: the cache bound deletes the least recently used); a file
    that fails :func:`verify_cached` or that ONNX Runtime cannot load (damaged on disk) is built again, once."""
    damaged = verify_cached(path)
    if damaged is not None:
        log(f"onnxruntime: the cached {path} is damaged ({damaged}); building it again")
        _remove(path)
        rebuild()
    try:
        session = OnnxRuntimeModel(path)
    except Exception as e:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        log(f"onnxruntime: the cached {path} does not load ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
            "building it again")  # fmt: skip
        _remove(path)
        rebuild()
        return OnnxRuntimeModel(path)
    try:
        os.utime(path)
    except OSError:  # a read-only cache folder: the file is used all the same
        pass
    return session
