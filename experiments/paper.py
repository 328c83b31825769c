"""The paper's protocol in one command (``isic-paper`` with ``--budget-min`` or ``--out``): its options, the fast
path's config overrides, and the call into :func:`experiments.protocol.run_protocol` (see the command line's
help for the bring-back folder and its summary.json)."""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

from experiments.table import EXPERIMENTS, git

__all__ = ["add_paper_arguments", "paper_overrides", "run_paper"]


def paper_overrides(args: argparse.Namespace, cuda: bool) -> list[str]:
    """The fast path's config overrides for the one-command protocol run (before the user's ``--set``)."""
    compile_on = (cuda and not args.no_compile) or args.compile
    graphs = cuda and compile_on and not args.no_cuda_graphs
    out = [f'model="{args.model}"', f"seed={args.seed}", 'input_pipeline="device"', "device_step=true",
           "store_size=256", "channels_last=true", "sync_every=50", f"val_every_epochs={args.val_every}",
           "checkpoint_every_epochs=0", "progress=false", "eval_batch_size=32", "num_workers=8",
           f"compile={str(compile_on).lower()}"]  # fmt: skip
    out.append(f'compile_mode="{"reduce-overhead" if graphs else "default"}"')
    out += [f"epochs={args.epochs}"] if args.epochs else []
    out += [f"max_train_images={args.limit_images}"] if args.limit_images else []
    out += [f'model_options.kernels="{args.kernels}"'] if args.kernels else []
    return out


def run_paper(args: argparse.Namespace) -> dict[str, Any]:
    """The paper's protocol in one command under ``--budget-min`` (see the module docstring); returns the summary."""
    import torch

    from experiments.evaluation import parse_eval
    from experiments.protocol import run_protocol
    from fastmtl.engine.train.config_file import load_config

    exp = EXPERIMENTS[args.exp]
    data_root = Path(args.data_root or exp["data_root"])
    if not data_root.exists():
        raise SystemExit(f"data folder {data_root} not found; pass --data-root")
    taken: set[str] = set()
    try:
        evals = tuple(parse_eval(spec, taken) for spec in args.eval)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from e
    torch.set_num_threads(args.threads) if args.threads else None
    cuda = torch.cuda.is_available()
    config = load_config(exp["config"], [*paper_overrides(args, cuda), *args.set])
    if config.run.device == "cuda" or (config.run.device == "auto" and cuda):
        cuda = True
    elif exp.get("gpu"):
        print("note: no CUDA device; this runs the protocol on the CPU (use --epochs / --limit-images / --set "
              "img_size=... for a dry run)", flush=True)  # fmt: skip
    stem = f"{args.exp}-{args.model}-s{args.seed}"
    run_dir = Path(args.runs) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(args.out or Path(args.runs) / f"{stem}-out")
    extra = {"command": args.command_line, "git_commit": git("rev-parse", "HEAD"), "python": platform.python_version()}
    print(f"{stem}: training into {run_dir}, results into {out}", flush=True)
    return run_protocol(config, data_root, out, run_dir, budget_min=args.budget_min, reserve_s=args.reserve_s,
                        evals=evals, limit_images=args.limit_images, extra=extra, schedule=args.schedule,
                        started=args.started,
                        log=lambda line: print(line, flush=True))  # fmt: skip


def add_paper_arguments(p: argparse.ArgumentParser) -> None:
    """The one-command protocol's options (any of --budget-min / --out selects it)."""
    g = p.add_argument_group("one command (the paper's protocol trained and evaluated inside --budget-min)")
    g.add_argument(
        "--budget-min",
        type=float,
        default=None,
        metavar="MIN",
        help="wall-clock budget of the whole command; training stops --reserve-s before it",
    )
    g.add_argument("--out", default="", help="bring-back folder (default: RUNS/<exp>-<model>-s<seed>-out)")
    g.add_argument("--epochs", type=int, default=0, help="epochs to plan (default: the config's 150)")
    g.add_argument(
        "--limit-images",
        type=int,
        default=0,
        metavar="N",
        help="train on the first N training images and evaluate at most N per --eval folder",
    )
    g.add_argument(
        "--eval",
        action="append",
        default=[],
        metavar="DIR[:SPLIT]",
        help="also evaluate the selected model on this folder's split (default split: test); repeatable",
    )
    g.add_argument("--val-every", type=int, default=5, metavar="K", help="validate every K epochs (and the last)")
    g.add_argument("--schedule", choices=("budget", "epochs"), default="budget",
                   help="budget (default): time the first steps, plan the steps that fit --budget-min and run the "
                   "poly schedule to its end over them; epochs: plan --epochs (the budget may cut it)")  # fmt: skip
    g.add_argument("--reserve-s", type=float, default=45.0, help="seconds kept for the final evaluation")
    g.add_argument(
        "--kernels",
        default="",
        choices=["", "auto", "triton", "reference"],
        help="kernel backend of the model (default: the model's, auto = Triton on CUDA)",
    )
    g.add_argument("--no-compile", action="store_true", help="eager step on CUDA (compiled by default there)")
    g.add_argument("--no-cuda-graphs", action="store_true", help="torch.compile without CUDA graphs")
    g.add_argument("--compile", action="store_true", help="compile the step on CPU too (minutes of compilation)")
