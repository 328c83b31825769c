"""Ahead-of-time compilation of Triton kernels for a GPU that is not there (Triton ships ``ptxas``).

:func:`compile_kernel` compiles one kernel configuration for a CUDA target (default sm_90a) and reports what a
launch would use: registers, spilled bytes, shared memory, whether the code issues tensor-core instructions, and
how it moves data (:func:`ptx_ops`: plain ``ld.global`` vs ``cp.async`` vs TMA, and how it waits on ``wgmma``).
Kernel arguments may be meta tensors, so launch plans built for real tensors can be compiled without a device.

``python -m fastmtl.kernels.aot --json OUT.json`` (from the repository root, which holds ``bench/shapes.py``)
writes the report of every configuration the model can launch, autotuning candidates included.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

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


def report(
    img_sizes=(224, 512),
    dtypes=(torch.float16, torch.bfloat16, torch.float32),
    capabilities=(90, 80),
    kernels=("dfe", "window_attention"),
    tuned_capabilities=(90,),
    launches=None,
) -> dict:
    """The AOT report of every kernel configuration the model launches at ``img_sizes``, autotuning candidates too.

    Needs ``bench.shapes`` (run from the repository root) and a process where the kernels are JIT functions
    (``TRITON_INTERPRET`` unset when they were imported). Window attention compiles its 16-bit ``dtypes`` only
    (its configurations depend on window, dtype and shift, so each stage's window is compiled once). ``launches``
    restricts the report to these launch names (DFE: ``branches``, ``merge``, ``sa-pool``...; window attention:
    ``fwd``, ``bwd_dkdv``, ``bwd_dq``, ``bwd_dbias``), None for all.

    Returns:
        ``{"torch", "triton", "rows", "spilling", "spill_allowances"}``: one row per compile with ``kernel`` ("dfe"
        or "window_attention"), ``launch``, ``shape``, ``dtype``, ``capability``, ``candidate`` (autotuning
        candidate index, 0 the default), the tiles and launch options, :func:`compile_kernel`'s fields
        (``ptx_ops`` included) and ``spill_allowance``; ``spilling`` lists the rows with spilled registers,
        ``spill_allowances`` is :data:`SPILL_ALLOWANCES`.
    """
    from bench.shapes import dfe_shapes, window_attention_shapes

    from .dfe.aot import aot_report
    from .window_attention import aot as wa

    rows = []
    if "dfe" in kernels:
        rows += [
            {"kernel": "dfe", **r}
            for r in aot_report(dfe_shapes(img_sizes), dtypes, capabilities, launches, tuned_capabilities)
        ]
    if "window_attention" in kernels:
        seen = set()
        low = [d for d in dtypes if d != torch.float32]
        for launch, shape, dtype, shifted in wa.variants(window_attention_shapes(img_sizes), low):
            if launches is not None and launch not in launches:
                continue
            for candidate in range(len(wa.candidates(shape))):
                for cap in capabilities if candidate == 0 else [c for c in capabilities if c in tuned_capabilities]:
                    key = (launch, shape.window, dtype, shifted, candidate, cap)
                    if key in seen:
                        continue
                    seen.add(key)
                    info = wa.kernel_resources(launch, shape, dtype, shifted, cap, candidate)
                    rows.append({"kernel": "window_attention", "launch": launch, "shape": shape.name,
                                 "dtype": str(dtype).split(".")[-1], "shifted": shifted, "capability": cap,
                                 "candidate": candidate, **info})  # fmt: skip
    for row in rows:
        row["spill_allowance"] = spill_allowance(row["capability"], row["dtype"])
    spilling = [r for r in rows if r["n_spills"]]
    return {"torch": torch.__version__, "triton": triton.__version__, "rows": rows, "spilling": spilling,
            "spill_allowances": list(SPILL_ALLOWANCES)}  # fmt: skip


def main(argv=None) -> int:
    """``python -m fastmtl.kernels.aot [--json OUT] [--img-sizes 224 512] [--kernels dfe window_attention] ...``"""
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m fastmtl.kernels.aot", description=main.__doc__)
    parser.add_argument("--json", default="-", help="output file ('-': stdout)")
    parser.add_argument("--img-sizes", type=int, nargs="+", default=[224, 512])
    parser.add_argument("--kernels", nargs="+", default=["dfe", "window_attention"])
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16", "float32"])
    parser.add_argument("--capabilities", type=int, nargs="+", default=[90, 80])
    parser.add_argument("--launches", nargs="+", default=None, help="only these launches (default: all)")
    args = parser.parse_args(argv)
    dtypes = tuple(getattr(torch, d) for d in args.dtypes)
    result = report(tuple(args.img_sizes), dtypes, tuple(args.capabilities), args.kernels, launches=args.launches)
    text = json.dumps(result, indent=1)
    if args.json == "-":
        print(text)
    else:
        Path(args.json).write_text(text + "\n")
    n, bad = len(result["rows"]), len(result["spilling"])
    over = sum(r["n_spills"] > r["spill_allowance"] for r in result["spilling"])
    print(f"{n} configurations compiled (triton {triton.__version__}), {bad} spill registers, {over} beyond the"
          " stated allowances", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
