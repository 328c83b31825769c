"""Each kernel launch's limit before any GPU measures it: resources from ptxas, FLOPs and bytes, roofline bound.

``python -m fastmtl.kernel_report --report OUT.json`` compiles, for every kernel launch the model makes at 224 and
512 px (batch 8 and 64; the shapes are :mod:`fastmtl.models.launches`'), its default configuration for sm_90a (no
GPU needed: Triton ships ptxas) and reports the registers, spilled bytes, shared memory and the occupancy they allow
on an H100 SXM, the launch's FLOPs and the bytes it must move at least (every input read once, every output written
once), and its roofline lower bound ``max(FLOPs / peak, bytes / bandwidth)`` with the constants of :data:`H100_SXM`.
``groups`` sums the bounds per benchmark group of ``bench/test_window_attention.py`` and ``bench/test_dfe.py`` (the
forward launches; window attention's forward+backward also its three backward launches), so that the GPU suite's
``summary.md`` shows each measured time as a percentage of its bound: 100 % would be the hardware's limit.

The bound is a floor, not a prediction: it assumes perfect overlap of compute and memory and full-rate tensor
cores, so the real kernels land above it. Launches without tensor-core code are bounded with the CUDA-core rate.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .aot_compile import compile_kernel
from .autotune import split
from .dfe.aot import _key, kernel_configs
from .window_attention import aot as wa

# NVIDIA H100 SXM5 (80 GB HBM3), from the H100 datasheet and the CUDA occupancy rules of compute capability 9.0.
H100_SXM = {
    "name": "NVIDIA H100 SXM5 80GB",
    "bf16_dense_tflops": 989.4,  # tensor cores, dense (no sparsity)
    "fp32_cuda_core_tflops": 66.9,  # launches whose code issues no tensor-core instruction
    "hbm_tb_per_s": 3.35,  # HBM3
    "sms": 132,
    "registers_per_sm": 65536,
    "register_alloc_unit": 256,  # registers are allocated per warp in units of 256
    "shared_bytes_per_sm": 233472,  # 228 KiB
    "shared_reserved_per_block": 1024,  # the driver keeps 1 KiB per block
    "max_warps_per_sm": 64,
    "max_blocks_per_sm": 32,
}
BATCHES = (8, 64)
DFE_FORWARD = ("branches", "merge", "sa-pool", "sa-gate")  # the eval (folded, fused) path of a DFE level
WA_FORWARD, WA_BACKWARD = ("fwd",), ("bwd_dkdv", "bwd_dq", "bwd_dbias")


def occupancy(n_regs: int, shared: int, num_warps: int, gpu: dict = H100_SXM) -> dict:
    """Blocks per SM each resource allows and the resulting occupancy (active warps / the SM's maximum)."""
    unit = gpu["register_alloc_unit"]
    regs_per_warp = math.ceil(max(n_regs, 1) * 32 / unit) * unit
    by_regs = gpu["registers_per_sm"] // (regs_per_warp * num_warps)
    by_smem = gpu["shared_bytes_per_sm"] // (shared + gpu["shared_reserved_per_block"])
    by_warps = gpu["max_warps_per_sm"] // num_warps
    blocks = min(by_regs, by_smem, by_warps, gpu["max_blocks_per_sm"])
    limiter = min(("registers", by_regs), ("shared memory", by_smem), ("warps", by_warps), key=lambda kv: kv[1])[0]
    return {"blocks_per_sm": blocks, "occupancy": blocks * num_warps / gpu["max_warps_per_sm"], "limited_by": limiter}


def bound_us(flops: float, bytes_moved: float, tensor_cores: bool, gpu: dict = H100_SXM) -> dict:
    """Roofline lower bound in microseconds and which side (compute or memory) sets it."""
    peak = gpu["bf16_dense_tflops"] if tensor_cores else gpu["fp32_cuda_core_tflops"]
    compute, memory = flops / (peak * 1e12) * 1e6, bytes_moved / (gpu["hbm_tb_per_s"] * 1e12) * 1e6
    return {"bound_us": max(compute, memory), "compute_us": compute, "memory_us": memory,
            "bound_by": "compute" if compute >= memory else "memory"}  # fmt: skip


def _numel(*shape: int) -> int:
    return math.prod(shape)


def dfe_work(launch: str, batch: int, c: int, side: int, nb: int = 4, elem: int = 2) -> tuple[float, float]:
    """(FLOPs, bytes) of one DFE launch: 3x3 convolutions as dense multiply-adds x 2 (dilated taps included)."""
    pix = batch * side * side
    if launch == "branches":  # nb 3x3 branches c -> c each, into the concatenation
        return 2.0 * pix * c * c * 9 * nb, elem * (pix * c + pix * nb * c + nb * 9 * c * c) + 4 * nb * c
    if launch == "merge":  # 3x3 conv nb*c -> c plus the 1x1 shortcut c -> c
        flops = 2.0 * pix * (nb * c * c * 9 + c * c)
        return flops, elem * (pix * nb * c + pix * c + pix * c + 9 * nb * c * c + c * c) + 4 * c
    if launch == "sa-pool":  # channel mean and max per pixel
        return 2.0 * pix * c, elem * pix * c + 4 * 2 * pix
    if launch == "sa-gate":  # 7x7 conv on the 2 pooled maps, sigmoid, scale every channel
        return 2.0 * pix * 2 * 49 + pix * c, 4 * 2 * pix + 2 * elem * pix * c
    raise ValueError(f"unknown DFE launch {launch!r}")


def window_attention_work(launch: str, batch: int, shape, elem: int = 2) -> tuple[float, float]:
    """(FLOPs, bytes) of one window-attention launch over ``batch`` maps of a stage ``shape``
    (:class:`fastmtl.models.launches.WindowAttentionShape`)."""
    n, d, heads = shape.window**2, shape.head_dim, shape.heads
    tokens = batch * shape.side * shape.side
    pairs = batch * (shape.side // shape.window) ** 2 * heads * n * n * d  # one N x N x d matmul, multiply-adds
    qkv, out, stats = elem * tokens * 3 * heads * d, elem * tokens * heads * d, 4 * tokens * heads
    table = 4 * (2 * shape.window - 1) ** 2 * heads
    matmuls = {"fwd": 2, "bwd_dkdv": 4, "bwd_dq": 3, "bwd_dbias": 2}[launch]  # QK^T + PV; recomputes included
    moved = {
        "fwd": qkv + table + out + stats,
        "bwd_dkdv": qkv + out + 2 * stats + table + 2 * qkv // 3,  # reads q, k, v, dO, lse, delta; writes dK, dV
        "bwd_dq": qkv + out + 2 * stats + table + qkv // 3,
        "bwd_dbias": qkv + out + 2 * stats + table + 4 * heads * n * n,
    }[launch]
    return 2.0 * pairs * matmuls, float(moved)


def _resources(fn, args, const, options, cache: dict) -> dict:
    key = _key(fn, args, const, options)  # what the compiled code depends on: compiled once
    if key not in cache:
        info = compile_kernel(fn, args, const, options, 90)
        cache[key] = {k: info[k] for k in ("n_regs", "n_spills", "shared", "num_warps", "num_stages",
                                           "has_tensor_cores")}  # fmt: skip
    return cache[key]


def report(dfe_shapes, window_attention_shapes, batches=BATCHES, dtype=torch.bfloat16) -> dict:
    """Every launch row of the given launch shapes and the per-group bounds (see the module docstring)."""
    cache: dict = {}
    rows = []
    for shape in dfe_shapes:
        configs = {name: (fn, args, const, opts) for name, fn, args, const, opts, cand in
                   kernel_configs(shape.channels, shape.side, dtype) if cand == 0}  # fmt: skip
        for launch in DFE_FORWARD:
            res = _resources(*configs[launch], cache)
            for batch in batches:
                flops, moved = dfe_work(launch, batch, shape.channels, shape.side)
                rows.append(_row("dfe", launch, shape.name, batch, flops, moved, res))
    for shape in window_attention_shapes:
        for launch in (*WA_FORWARD, *WA_BACKWARD):
            for shifted in sorted({False, shape.shifted}):
                args, constexprs = wa.launch_args(launch, shape, dtype, shifted)
                tiles, options = split(wa.candidates(shape)[0])
                res = _resources(wa.KERNELS[launch], args, {**constexprs, **tiles}, options, cache)
                for batch in batches:
                    flops, moved = window_attention_work(launch, batch, shape)
                    row = _row("window_attention", launch, shape.name, batch, flops, moved, res)
                    rows.append({**row, "shifted": shifted})
    return {"gpu": H100_SXM, "target": "sm_90a", "dtype": str(dtype).split(".")[-1], "torch": torch.__version__,
            "triton": _triton_version(), "distinct_compiles": len(cache), "rows": rows,
            "groups": groups(rows)}  # fmt: skip


def _row(kernel: str, launch: str, shape: str, batch: int, flops: float, moved: float, res: dict) -> dict:
    return {"kernel": kernel, "launch": launch, "shape": shape, "batch": batch, **res,
            **occupancy(res["n_regs"], res["shared"], res["num_warps"]), "gflops": flops / 1e9,
            "mbytes": moved / 1e6, "arithmetic_intensity": flops / max(moved, 1.0),
            **bound_us(flops, moved, res["has_tensor_cores"])}  # fmt: skip


def groups(rows: list[dict]) -> dict[str, float]:
    """Benchmark group name -> the sum of its launches' bounds (us). A shifted stage's second block is the
    shifted variant; the benchmark times one block, shifted when the stage shifts."""
    out: dict[str, float] = {}
    for r in rows:
        if r["kernel"] == "dfe":
            key = f"dfe-{r['shape']}-b{r['batch']}-fwd"
            out[key] = out.get(key, 0.0) + r["bound_us"]
            continue
        shifted_stage = any(x["shifted"] for x in rows if x["shape"] == r["shape"] and x["kernel"] == r["kernel"])
        if r["shifted"] != shifted_stage:
            continue
        for mode in ("fwd", "fwd+bwd") if r["launch"] in WA_FORWARD else ("fwd+bwd",):
            key = f"window_attention-{r['shape']}-b{r['batch']}-{mode}"
            out[key] = out.get(key, 0.0) + r["bound_us"]
    return out


def _triton_version() -> str:
    import triton

    return triton.__version__


def markdown(result: dict, batch: int = 64) -> str:
    """The report's launches at ``batch`` as one Markdown table (docs/DEVELOPMENT.md shows it)."""
    head = ("| kernel | launch | shape | regs | spills B | smem KiB | occupancy (limit) | GFLOP | MB | bound us "
            "(by) |\n| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- |")  # fmt: skip
    lines = [head]
    for r in result["rows"]:
        if r["batch"] != batch or r.get("shifted"):
            continue
        lines.append(f"| {r['kernel']} | {r['launch']} | {r['shape']} | {r['n_regs']} | {r['n_spills']} | "
                     f"{r['shared'] / 1024:.0f} | {r['occupancy']:.0%} ({r['limited_by']}) | {r['gflops']:.2f} | "
                     f"{r['mbytes']:.1f} | {r['bound_us']:.1f} ({r['bound_by']}) |")  # fmt: skip
    return "\n".join(lines)


def write(path: Path, dfe_shapes, window_attention_shapes) -> dict:
    """Compiles and writes the report of the given launch shapes to ``path`` (JSON) and its tables next to it
    (``.md``); returns it."""
    result = report(dfe_shapes, window_attention_shapes)
    path.write_text(json.dumps(result, indent=1) + "\n")
    tables = [f"## batch {b}\n\n{markdown(result, b)}\n" for b in sorted({r["batch"] for r in result["rows"]})]
    head = f"# Roofline of every kernel launch (sm_90a, {result['gpu']['name']}, triton {result['triton']})\n"
    path.with_suffix(".md").write_text("\n".join([head, *tables]))
    return result
