"""Ahead-of-time compilation of Triton kernels for a GPU that is not there (Triton ships ``ptxas``).

:func:`compile_kernel` compiles one kernel configuration for a CUDA target (default sm_90a) and reports what a
launch would use: registers, spilled bytes, shared memory, and whether the code issues tensor-core instructions.
Kernel arguments may be meta tensors, so launch plans built for real tensors can be compiled without a device.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget

_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int32: "i32",
           torch.int64: "i64", torch.int8: "i8", torch.uint8: "u8"}  # fmt: skip
TENSOR_CORE_OPS = {90: ("wgmma",), 80: ("mma.sync",)}


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


def _ptxas_usage(ptx: str, arch: str) -> dict:
    """Registers and spill bytes from ``ptxas -v`` (the compiled kernel's ``n_regs`` need a driver to load it)."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        # Triton's own ptxas flags (backends/nvidia/compiler.py make_cubin), so the counts match what it loads.
        flags = ["-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={arch}"]
        cmd = [get_ptxas(90).path, *flags, str(src), "-o", str(Path(tmp) / "k.o")]
        log = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]
    return {"n_regs": int(regs.group(1)) if regs else -1, "n_spills": max(spills, default=0)}


def compile_kernel(fn, args: dict, constexprs: dict, options: dict | None = None, capability: int = 90) -> dict:
    """Compiles ``fn`` for ``sm_<capability>`` and returns its resource usage.

    Returns:
        dict with ``n_regs`` (per thread), ``n_spills`` (bytes, max of stores/loads), ``shared`` (bytes),
        ``num_warps``, ``has_tensor_cores`` (wgmma on sm_90, mma.sync on sm_80), ``arch`` and ``asm`` (the names
        of the produced assembly stages).
    """
    if not isinstance(fn, triton.runtime.JITFunction):
        raise TypeError(f"{fn!r} is not a JITFunction (kernels imported under TRITON_INTERPRET=1 cannot be compiled)")
    sig, attrs = signature(fn, args, constexprs)
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=dict(constexprs), attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", capability, 32), options=dict(options or {}))
    ptx = compiled.asm["ptx"]
    arch = re.search(r"^\.target (\w+)", ptx, re.M).group(1)
    ops = TENSOR_CORE_OPS.get(capability, ("mma",))
    return {
        **_ptxas_usage(ptx, arch),
        "shared": compiled.metadata.shared,
        "num_warps": compiled.metadata.num_warps,
        "has_tensor_cores": any(op in ptx for op in ops),
        "arch": arch,
        "asm": sorted(compiled.asm),
    }
