"""One small launch of every Triton kernel, forward and backward: the target of the GPU suite's memory checks.

    compute-sanitizer --tool memcheck  python -m bench.kernel_launches
    compute-sanitizer --tool racecheck python -m bench.kernel_launches --only window_attention

Shapes are small but not block-aligned (odd sides, 49-token windows, a shifted window, channels that are not a
multiple of the tile), so masked tile edges are exercised. Run it with ``PYTORCH_NO_CUDA_MEMORY_CACHING=1``: with
the caching allocator an out-of-bounds access usually lands inside a pooled block and the sanitizer cannot see it.
On CPU it runs the same launches through the interpreter when ``TRITON_INTERPRET=1`` (a dry run of the script).
Prints one line per launch group and exits non-zero if any output is not finite.
"""

from __future__ import annotations

import argparse
import sys

import torch

from fastmtl.kernels.window_attention import window_attention
from fastmtl.layers.dfe import DFE, DFE3

GROUPS = ("dfe", "dfe3", "window_attention")


def _dfe(device: torch.device, dtype: torch.dtype, cls: type) -> list[torch.Tensor]:
    """Eval (folded, fused) and training (raw convs + BN) paths, forward and backward."""
    torch.manual_seed(0)
    outs = []
    for train in (False, True):
        module = cls(24, (2, 3, 9), kernels="triton").to(device, dtype).train(train)
        x = torch.randn(2, 24, 11, 13, device=device, dtype=dtype, requires_grad=True)
        y = module(x)
        y.float().sum().backward()
        outs += [y, x.grad]
    return outs


def _window_attention(device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    """A plain and a shifted 7x7 window (49 tokens: a masked last tile), forward and the three backward kernels."""
    outs = []
    for shift in (0, 3):
        gen = torch.Generator(device=device).manual_seed(shift)
        qkv = torch.randn(2, 14, 14, 3, 2, 32, device=device, generator=gen).to(dtype).requires_grad_()
        table = (0.1 * torch.randn(13 * 13, 2, device=device, generator=gen)).to(dtype).requires_grad_()
        out = window_attention(qkv, table, window=7, shift=shift)
        outs += [out, *torch.autograd.grad(out, (qkv, table), torch.randn_like(out))]
    return outs


def run(groups: tuple[str, ...], device: torch.device, dtype: torch.dtype) -> dict[str, bool]:
    """Launches ``groups``; returns, per group, whether every output and gradient is finite."""
    launch = {
        "dfe": lambda: _dfe(device, dtype, DFE),
        "dfe3": lambda: _dfe(device, dtype, DFE3),
        "window_attention": lambda: _window_attention(device, dtype),
    }
    finite = {}
    for name in groups:
        tensors = launch[name]()
        if device.type == "cuda":
            torch.cuda.synchronize()
        finite[name] = all(bool(torch.isfinite(t.float()).all()) for t in tensors)
        print(f"{name}: {len(tensors)} outputs and gradients, finite={finite[name]}", flush=True)
    return finite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=GROUPS, default=list(GROUPS), help="launch groups to run")
    parser.add_argument(
        "--dtype",
        choices=("bf16", "fp16", "fp32"),
        default=None,
        help="default: bf16 on CUDA, fp32 on CPU (the interpreter has no bf16)",
    )
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]
    finite = run(tuple(args.only), device, dtype)
    return 0 if all(finite.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
