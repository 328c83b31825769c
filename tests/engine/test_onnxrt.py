"""ONNX Runtime paths (inference.onnxrt): resformer_mtl exported once and cached, int8 quantized with the stem and
the output operators kept fp32, both close to eager, and reused from the cache by a later build."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import torch
from torch import nn

import fastmtl
from fastmtl.config import ModelConfig
from fastmtl.inference import onnxrt, openvino_rt
from fastmtl.inference import precision as P
from fastmtl.inference.agreement import agreement
from fastmtl.inference.path import PrecisionUnavailable, Request, auto_runtime
from fastmtl.registry import register_model
from fastmtl.runtime import cpu_info
from tests.engine.test_train import TinyMTL

pytestmark = pytest.mark.skipif(onnxrt.missing() is not None, reason=str(onnxrt.missing()))


class TwoConvMTL(TinyMTL):
    """The tiny test model with a convolution that reads neither the image nor feeds an output: int8 quantizes it."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.body.append(nn.Conv2d(8, 8, 3, padding=1))


@register_model(("img_size", "in_chans", "seg_classes", "cls_classes"))
def two_conv_mtl_test(**kwargs) -> TwoConvMTL:
    """Test-only model: exports and quantizes in seconds."""
    return TwoConvMTL(ModelConfig(name="two_conv_mtl_test", dfe="none", drop_path_rate=0.0, **kwargs))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return fastmtl.create_model("resformer_mtl", img_size=32).eval()


def test_fp32_and_int8_follow_eager_and_load_from_the_cache(model, module_cache, built_path):
    import onnx

    torch.manual_seed(1)
    calibration = [torch.randn(2, 3, 32, 32) for _ in range(3)]
    x = torch.randn(3, 3, 32, 32)  # another batch size than the one exported: the batch is dynamic
    with torch.inference_mode():
        ref = model(x)
    built = []
    fp32 = built_path(model, "fp32", calibration[0], runtime="onnxruntime", log=built.append)
    int8 = built_path(model, "int8", calibration[0], runtime="onnxruntime", calibration=calibration,
                      log=built.append)  # fmt: skip
    assert [line.split(":")[0] for line in built] == ["onnxruntime", "onnxruntime"]  # exported, then calibrated
    assert "exported" in built[0] and "int8 calibrated on 6 image(s)" in built[1]

    with torch.inference_mode():
        out32, out8 = fp32(x), int8(x)
    torch.testing.assert_close(out32.seg_logits, ref.seg_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out32.cls_logits, ref.cls_logits, atol=1e-4, rtol=1e-4)
    assert out8.seg_logits.shape == ref.seg_logits.shape and out8.cls_logits.dtype == torch.float32
    assert agreement(ref, out8)["mask_agreement"] > 95.0, agreement(ref, out8)

    graph = onnx.load(str(int8.path)).graph
    ops = Counter(node.op_type for node in graph.node)
    assert ops["QuantizeLinear"] > 20 and ops["DequantizeLinear"] > ops["QuantizeLinear"]  # weights too
    producer = {out: node for node in graph.node for out in node.output}
    weights = {init.name for init in graph.initializer}
    for name in ("seg_logits", "cls_logits"):  # the operators that produce the outputs keep fp32 weights
        node = producer[name]
        while node.op_type not in ("Conv", "Gemm", "MatMul"):
            node = producer[node.input[0]]
        assert node.input[1] in weights, (name, node.name)
    stems = [node for node in graph.node if "image" in node.input]  # ResNet stem, Swin patch embeddings
    assert len(stems) >= 2 and all(n.op_type == "Conv" and n.input[1] in weights for n in stems)  # raw pixels, fp32
    inner = [n for n in graph.node if n.op_type == "Conv" and n not in stems]
    assert sum(producer.get(n.input[1]) is not None for n in inner) > len(inner) // 2  # most convs: int8 weights

    def weight_of(node, i) -> bool:  # input i is a weight, int8 (behind a DequantizeLinear) or fp32
        source = producer.get(node.input[i])
        return node.input[i] in weights or (source.op_type == "DequantizeLinear" and source.input[0] in weights)

    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    attention = [n for n in matmuls if not weight_of(n, 1)]  # q @ k^T and attn @ v
    linear = [n for n in matmuls if weight_of(n, 1)]
    assert len(attention) >= 2 and len(linear) >= 4
    assert not any(producer[i].op_type == "DequantizeLinear" for n in attention for i in n.input)  # fp32
    assert all(producer[n.input[1]].op_type == "DequantizeLinear" for n in linear)  # int8 weights
    quantized = {node.input[0] for node in graph.node if node.op_type == "QuantizeLinear"}
    assert not any(n.output[0] in quantized for n in linear)  # linear layers return fp32

    again = []
    os.utime(int8.path, (1e9, 1e9))
    reused = built_path(model, "int8", calibration[0], runtime="onnxruntime", log=again.append)
    assert again == [] and reused.path == int8.path  # nothing exported or calibrated: read from the cache
    assert int8.path.stat().st_mtime > 1e9  # marked as used: the cache bound removes the least recently used

    checkpoint = module_cache / "model.safetensors"
    checkpoint.write_bytes(b"stands in for the checkpoint in auto's cache key")
    small = P.plan_auto("cpu", checkpoint, x.shape, 5, cpu_info(), model=model)  # exported already: worth it
    assert small.name == "fp32+onnxruntime" and "exported by an earlier job" in small.reason

    other = fastmtl.create_model("resformer_mtl", img_size=32).eval()  # other weights: another file
    assert P.plan_auto("cpu", checkpoint, x.shape, 5, cpu_info(), model=other).name == "fp32"
    assert onnxrt.cached_file(other, x.shape, "fp32") != onnxrt.cached_file(model, x.shape, "fp32") == fp32.path
    assert onnxrt.cached_file(model, (1, 3, 64, 64), "fp32") != fp32.path  # another image size


@pytest.fixture(scope="module")
def tiny_model():
    from tests.engine.test_train import tiny_config  # noqa: F401 - registers tiny_mtl_test

    torch.manual_seed(0)
    return fastmtl.create_model("tiny_mtl_test", img_size=32).eval()


@pytest.mark.parametrize("damage", ["altered weights", "no checksum", "truncated"])
def test_a_cached_file_altered_on_disk_is_never_used(tiny_model, module_cache, damage, built_path):
    """A cached file whose weights were altered still loads in ONNX Runtime, with outputs far from the model's: the
    checksum recorded when it was written catches it, and it is exported again with one line."""
    import onnx
    from onnx import numpy_helper

    x = torch.randn(2, 3, 32, 32)
    built_path(tiny_model, "fp32", x, runtime="onnxruntime", log=lambda line: None)
    path = onnxrt.cached_file(tiny_model, x.shape, "fp32")
    if damage == "altered weights":
        proto = onnx.load(str(path))
        init = max(proto.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 100, init.name))
        onnx.save(proto, str(path))
        assert onnxrt.OnnxRuntimeModel(path)(x).seg_logits.shape[0] == 2  # it still loads and runs
    elif damage == "no checksum":  # written by a fastmtl that recorded none
        path.with_name(path.name + ".sha256").unlink()
    else:
        path.write_bytes(path.read_bytes()[:-1000])
    lines = []
    rebuilt = built_path(tiny_model, "fp32", x, runtime="onnxruntime", log=lines.append)
    assert len(lines) == 2 and lines[0].startswith(f"onnxruntime: the cached {path} is damaged (")
    assert "exported to" in lines[1] and onnxrt.verify_cached(path) is None
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(x).seg_logits, tiny_model(x).seg_logits, atol=1e-4, rtol=1e-4)


def _int8_tag(vnni: bool) -> str:
    return f"{onnxrt._INT8}-vnni" if vnni else onnxrt._INT8


def test_the_int8_recipe_and_file_follow_the_cpu_kind_and_older_recipes_are_pruned(module_cache, cpu_kind, built_path):
    import onnx
    from onnx import numpy_helper

    torch.manual_seed(2)
    model = two_conv_mtl_test(img_size=32, in_chans=3, seg_classes=1, cls_classes=2).eval()
    calibration = [torch.randn(2, 3, 32, 32)]
    lines = []
    int8 = built_path(model, "int8", calibration[0], runtime="onnxruntime", calibration=calibration, refresh=True,
                      log=lines.append)  # fmt: skip
    assert f"-{_int8_tag(cpu_kind.int8_vnni)}-" in int8.path.name and "int8 calibrated on 2 image(s)" in lines[-1]
    graph = onnx.load(str(int8.path)).graph
    weights = [numpy_helper.to_array(i) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    widest = max(int(abs(w.astype(int)).max()) for w in weights if w.size > 1)
    assert widest > 64 if cpu_kind.int8_vnni else widest <= 64, widest  # 8-bit weights with VNNI, 7-bit without

    digest = int8.path.stem.rsplit("-", 1)[1]
    older = [onnxrt.cached_file(model, calibration[0].shape, tag, digest=digest)
             for tag in ("int8", "int8-vnni", "int8r1", "int8r1-vnni")]  # fmt: skip
    other_cpu = onnxrt.cached_file(model, calibration[0].shape, _int8_tag(not cpu_kind.int8_vnni), digest=digest)
    for path in [*older, other_cpu]:
        path.write_bytes(b"a file of an older recipe, or of another CPU kind")
    int8.path.write_bytes(b"damaged on disk")
    repaired = []
    again = built_path(model, "int8", calibration[0], runtime="onnxruntime", log=repaired.append)
    assert "is damaged" in repaired[0] and "int8 calibrated on 2 image(s)" in repaired[1], repaired
    assert again.path == int8.path
    assert not any(p.exists() for p in older) and other_cpu.exists()  # older recipes' files pruned when calibrating
    other_cpu.unlink()


def test_the_cache_folder_keeps_the_most_recently_used_files_within_its_bound(tmp_path, monkeypatch):
    files = {name: tmp_path / f"{name}.onnx" for name in ("oldest", "old", "recent", "running")}
    for used, path in enumerate(files.values()):  # used in this order
        path.write_bytes(b"x" * 400)
        os.utime(path, (1e9 + used, 1e9 + used))
    os.utime(files["running"], (1, 1))  # the running job's file, however old, is never removed
    (tmp_path / "notes.txt").write_bytes(b"x" * 4000)  # not an ONNX file: not counted, not removed
    lines = []
    monkeypatch.setenv("FASTMTL_ONNX_CACHE_GB", "1e-6")  # 1000 bytes: two of the four files fit
    onnxrt._bound_cache(tmp_path, keep={files["running"]}, log=lines.append)
    assert sorted(p.stem for p in tmp_path.glob("*.onnx")) == ["recent", "running"]
    assert (tmp_path / "notes.txt").exists() and "removed the least recently used oldest.onnx, old.onnx" in lines[0]
    onnxrt._bound_cache(tmp_path, keep=set(), log=lines.append)  # within the bound already: nothing to do
    assert len(lines) == 1
    monkeypatch.setenv("FASTMTL_ONNX_CACHE_GB", "0")
    onnxrt._bound_cache(tmp_path, keep={files["running"]}, log=lines.append)
    assert [p.stem for p in tmp_path.glob("*.onnx")] == ["running"]
    for bad in ("-1", "two", "nan"):
        monkeypatch.setenv("FASTMTL_ONNX_CACHE_GB", bad)
        with pytest.raises(ValueError, match=f"FASTMTL_ONNX_CACHE_GB='{bad}': expected a size in gigabytes"):
            onnxrt.cache_limit_bytes()
    monkeypatch.delenv("FASTMTL_ONNX_CACHE_GB")
    assert onnxrt.cache_limit_bytes() == 2_000_000_000


def test_onnxruntime_refuses_what_it_cannot_run(model, built_path):
    with pytest.raises(PrecisionUnavailable, match="fp32 and int8 on a CPU"):
        built_path(model, "bf16", torch.randn(2, 3, 32, 32), runtime="onnxruntime")
    with pytest.raises(ValueError, match="compile applies to the torch runtime"):
        built_path(model, "fp32", torch.randn(2, 3, 32, 32), runtime="onnxruntime", compile=True)
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'; expected one of auto, torch, onnxruntime"):
        Request("fp32", "tensorrt")
    int8 = "onnxruntime" if openvino_rt.missing() else "openvino"  # OpenVINO's int8 is faster where installed
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert auto_runtime("int8", cpu) == int8
    assert auto_runtime("fp32", cpu) == auto_runtime("int8", cuda) == "torch"


def test_a_missing_package_is_named(monkeypatch, built_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name))
    assert "onnxruntime" in onnxrt.missing() and "fastmtl[export]" in onnxrt.missing()
    assert auto_runtime("int8", torch.device("cpu")) == "torch"  # int8 then runs on torchao
    with pytest.raises(PrecisionUnavailable, match="need onnxruntime"):
        built_path(fastmtl.create_model("resformer_mtl", img_size=32), "fp32", torch.randn(2, 3, 32, 32),
                   runtime="onnxruntime")  # fmt: skip
