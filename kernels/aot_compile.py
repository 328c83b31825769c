"""Ahead-of-time compilation of Triton kernels for a GPU that is not there (Triton ships ``ptxas``).

:func:`compile_kernel` compiles one kernel configuration for a CUDA target (default sm_90a) and reports what a
launch would use: registers, spilled bytes, shared memory, whether the code issues tensor-core instructions, and
how it moves data (:func:`ptx_ops`: plain ``ld.global`` vs ``cp.async`` vs TMA, and how it waits on ``wgmma``).
Kernel arguments may be meta tensors, so launch plans built for real tensors can be compiled without a device.

Imports no op: each op's ``aot.py`` builds its launches on meta tensors and compiles them through this module;
:mod:`fastmtl.kernels.aot` (``python -m fastmtl.kernel_report``) gathers them into the report.
"""

from __future__ import annotations

import contextlib
import io
import re

import torch
import triton
from triton.backends.compiler import GPUTarget

_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int32: "i32",
           torch.int64: "i64", torch.int8: "i8", torch.uint8: "u8"}  # fmt: skip
TENSOR_CORE_OPS = {90: ("wgmma",), 80: ("mma.sync",)}
# Static PTX instruction counts of the report: how a kernel loads (plain per-thread loads, Ampere-style async copies,
# Hopper TMA) and how its tensor-core work is pipelined. Each regex matches an opcode at the start of an instruction.
PTX_OPS = {
    "ld_global": r"ld\.global\.",  # per-thread global loads (vectorised or not)
    "cp_async": r"cp\.async\.c[ag]\.",  # global -> shared async copies (sm_80+)
    "cp_async_bulk_tensor": r"cp\.async\.bulk\.tensor\.",  # TMA copies of a tensor-descriptor tile (sm_90)
    "wgmma": r"wgmma\.mma_async\.",  # warp-group MMAs (sm_90)
    "wgmma_wait": r"wgmma\.wait_group\.",  # waits for outstanding warp-group MMAs
    "mma_sync": r"mma\.sync\.",  # warp MMAs (sm_80)
    "st_global": r"st\.global\.",
}


# Register spills the AOT tests accept, each stated here and in the report rows it covers (``spill_allowance``,
# bytes). None on the GPU target, sm_90a.
SPILL_ALLOWANCES = (
    {
        "capability": 80,
        "dtype": "float32",
        "max_bytes": 32,
        "reason": "sm_80 is not the GPU machine's target (its default candidate is compiled as a portability check):"
        " ptxas 12.9 of triton 3.8 spills 20 bytes of the fp32 branches-sum kernel at 72 of 255 registers, and 4-20"
        " bytes of some launch for every other small fp32 tile tried (ptxas 12.8 of triton 3.6 spills none)",
    },
)


def spill_allowance(capability: int, dtype: str) -> int:
    """Spilled bytes :data:`SPILL_ALLOWANCES` accepts for a kernel compiled for ``capability`` in ``dtype``."""
    return max(
        (a["max_bytes"] for a in SPILL_ALLOWANCES if (a["capability"], a["dtype"]) == (capability, dtype)), default=0
    )


def signature(fn, args: dict, constexprs: dict) -> tuple[dict, dict]:
    """Triton signature and divisibility attributes for ``fn`` called with ``args`` (tensors may be meta).

    Mirrors the JIT's specialisation: pointers (torch allocations are 16-byte aligned) and integers divisible by
    16 get ``tt.divisibility = 16``.
    """
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
            continue
        value = args[name]
        if isinstance(value, torch.Tensor):
            sig[name] = "*" + _DTYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            sig[name] = "i1"
        elif isinstance(value, int):
            sig[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "fp32"
    return sig, attrs


def _ptxas_usage(log: str) -> dict:
    """Registers and spill bytes from the ``ptxas -v`` log of Triton's own ptxas run (the compiled kernel's
    ``n_regs`` needs a driver to load it). Triton's flags differ between versions (3.8 adds
    ``--regAllocOptLevel=2``, 3.6 does not), so the log is Triton's, not a rerun with flags of our own."""
    regs = re.search(r"Used (\d+) registers", log)
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]
    return {"n_regs": int(regs.group(1)) if regs else -1, "n_spills": max(spills, default=0)}


def _compile_with_ptxas_log(src, target, options):
    """``triton.compile`` that always runs ptxas (no cache hit) and returns (compiled kernel, ptxas log)."""
    from triton import knobs

    saved = knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log
    knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = True, True
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):  # Triton prints the log of its ptxas run
            compiled = triton.compile(src, target=target, options=options)
    finally:
        knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = saved
    return compiled, log.getvalue()


def ptx_ops(ptx: str) -> dict:
    """Static counts of :data:`PTX_OPS` in ``ptx`` plus ``wgmma_wait_min_pending``: the smallest N of the
    ``wgmma.wait_group N`` waits (0: some wait drains every MMA in flight, so MMAs do not overlap the next loads;
    -1: no wait)."""
    counts = {}
    for name, pattern in PTX_OPS.items():
        counts[name] = len(re.findall(rf"^\s*(?:@!?%p\d+\s+)?{pattern}", ptx, re.M))
    pending = [int(n) for n in re.findall(r"^\s*wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx, re.M)]
    counts["wgmma_wait_min_pending"] = min(pending, default=-1)
    return counts


def compile_kernel(fn, args: dict, constexprs: dict, options: dict | None = None, capability: int = 90) -> dict:
    """Compiles ``fn`` for ``sm_<capability>`` and returns its resource usage.

    Returns:
        dict with ``n_regs`` (per thread), ``n_spills`` (bytes, max of stores/loads), ``shared`` (bytes),
        ``num_warps``, ``num_stages``, ``has_tensor_cores`` (wgmma on sm_90, mma.sync on sm_80), ``ptx_ops``
        (:func:`ptx_ops`), ``arch`` and ``asm`` (the names of the produced assembly stages).
    """
    if not isinstance(fn, triton.runtime.JITFunction):
        raise TypeError(f"{fn!r} is not a JITFunction (kernels imported under TRITON_INTERPRET=1 cannot be compiled)")
    sig, attrs = signature(fn, args, constexprs)
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=dict(constexprs), attrs=attrs)
    compiled, log = _compile_with_ptxas_log(src, GPUTarget("cuda", capability, 32), dict(options or {}))
    ptx = compiled.asm["ptx"]
    arch = re.search(r"^\.target (\w+)", ptx, re.M).group(1)
    ops = TENSOR_CORE_OPS.get(capability, ("mma",))
    return {
        **_ptxas_usage(log),
        "shared": compiled.metadata.shared,
        "num_warps": compiled.metadata.num_warps,
        "num_stages": compiled.metadata.num_stages,
        "has_tensor_cores": any(op in ptx for op in ops),
        "ptx_ops": ptx_ops(ptx),
        "arch": arch,
        "asm": sorted(compiled.asm),
    }
