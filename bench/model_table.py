"""Markdown table of every registered model: parameters and GFLOPs per image (``python -m bench.model_table``).

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products; one
multiply-add = 2 FLOPs), the convention of SPEC.md §7.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

import fastmtl


def count(name: str, img_size: int, seg_classes: int = 1) -> tuple[int, float]:
    """(parameters, GFLOPs for one image) of model ``name`` at ``img_size``."""
    model = fastmtl.create_model(name, img_size=img_size, seg_classes=seg_classes, kernels="reference").eval()
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, img_size, img_size))
    return params, counter.get_total_flops() / 1e9


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--img-size", type=int, default=224)
    args = parser.parse_args(argv)
    print(f"| model | parameters | GFLOPs/image at {args.img_size} |")
    print("| --- | ---: | ---: |")
    for name in fastmtl.list_models():
        params, gflops = count(name, args.img_size)
        print(f"| `{name}` | {params:,} | {gflops:.2f} |")


if __name__ == "__main__":
    main()
