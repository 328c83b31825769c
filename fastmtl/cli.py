"""The ``fastmtl`` command line: argparse subcommands only; the work happens in :mod:`fastmtl.engine`.

    fastmtl train   --config FILE|quick --data-root DIR --out DIR [--resume] [--set k=v ...] [--device cpu|cuda]
    fastmtl eval    --checkpoint FILE --data-root DIR --split {training,validation,test,train,val} --out DIR
    fastmtl predict --checkpoint FILE --input PATH [PATH ...] --output DIR [--batch-size N --workers N --overlays]
    fastmtl export  --checkpoint FILE --format aoti|onnx --output PATH
    fastmtl info
    fastmtl demo    [--data-root DIR] [--out DIR]

Bad input (a missing file, an unknown option or model, a mismatched checkpoint, a diverging loss) prints one
``fastmtl: error: ...`` line to stderr and exits with status 2; an interrupted run exits with 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "main"]

_SPLITS = ("training", "validation", "test", "train", "val")  # each dataset kind resolves these to its own names


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model", description="Train a model (SPEC section 5 protocol).")
    p.add_argument("--config", required=True, help="TOML config file or preset name (quick, demo)")
    p.add_argument("--data-root", help="dataset folder (kind auto-detected); omit for synthetic data")
    p.add_argument("--out", default="runs/train", help="output folder (default: runs/train)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out exactly where it stopped")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set lr=1e-4 --set model_options.dfe=none")  # fmt: skip
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override the config's device")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on a dataset split")
    p.add_argument("--checkpoint", required=True, help="a .safetensors file written by fastmtl")
    p.add_argument("--data-root", help="dataset folder (kind auto-detected); omit for synthetic data")
    p.add_argument("--split", default="test", choices=_SPLITS, help="split to evaluate, any kind (default: test)")
    p.add_argument("--out", required=True, help="report folder (metrics.json, plots, worst cases)")
    p.add_argument("--kind", help="dataset kind (default: detected)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict masks and class probabilities for images")
    p.add_argument("--checkpoint", required=True, help="a .safetensors file written by fastmtl")
    p.add_argument("--input", required=True, nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--output", required=True, help="output folder (masks/, probabilities.csv, overlays/)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--overlays", action="store_true", help="also write the predictions drawn on the images")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--img-size", type=int, help="inference side (default: the checkpoint's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--no-optimize", action="store_true", help="run the model as saved (no BN folding etc.)")
    p.add_argument("--compile", action="store_true", help="torch.compile the optimized model (slow to start)")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint as an AOTInductor package (.pt2) or an ONNX file")
    p.add_argument("--checkpoint", required=True, help="a .safetensors file written by fastmtl")
    p.add_argument("--format", choices=("aoti", "onnx"), default="aoti", help="aoti (.pt2, default) or onnx")
    p.add_argument("--output", required=True, help="file to write (.pt2 or .onnx)")
    p.add_argument("--img-size", type=int, help="input side (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=1, help="example batch (the only one with --static-batch)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size instead of 1..1024")
    p.add_argument("--no-check", action="store_true", help="skip the parity check against the eager model")
    p.add_argument("--device", default="cpu", help="compile for cpu (default), cuda, cuda:1 ...")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train briefly, evaluate and predict: the whole pipeline in a minute or two")
    p.add_argument("--data-root", help="dataset folder (default: the embedded synthetic lesions)")
    p.add_argument("--out", default="fastmtl-demo", help="output folder (default: fastmtl-demo)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the demo preset")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo in --out")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with the five subcommands."""
    parser = argparse.ArgumentParser(
        prog="fastmtl", description="ResFormer-MTL: lesion segmentation + classification with one network."
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for PyTorch (default: torch's choice); use 1 per process when other jobs share the cores",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,eval,predict,export,info,demo}")
    _add_train(sub)
    _add_eval(sub)
    _add_predict(sub)
    _add_export(sub)
    sub.add_parser("info", help="versions, devices and registered models")
    _add_demo(sub)
    return parser


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _device(name: str) -> str:
    from fastmtl.runtime import resolve_device

    return str(resolve_device(name)) if name in ("auto", "cuda") else name


def _cmd_train(args: argparse.Namespace) -> int:
    from fastmtl.engine.train import train
    from fastmtl.engine.train_config import load_config

    overrides = [*args.overrides, *([f"device={args.device}"] if args.device else [])]
    config = load_config(args.config, overrides)
    result = train(config, args.data_root, args.out, resume=args.resume)
    if _is_main_rank():
        _print_train(result)
    return 0


def _print_train(result: dict[str, Any]) -> None:
    if result["stopped_early"]:
        print(f"stopped after global step {result['global_step']} (stop_after_steps); continue with --resume")
        return
    metric, value = result["selection_metric"], result["best_value"]
    print(f"trained {result['epochs_completed']} epoch(s), {result['global_step']} steps")
    if metric is not None:
        print(f"best {metric} = {value:.2f} at epoch {result['best_epoch']}")
    print(f"best checkpoint: {result['best_checkpoint']}")
    print(f"logs and curves: {result['out_dir']}/log.csv, {result['out_dir']}/curves.png")


def _cmd_eval(args: argparse.Namespace) -> int:
    from fastmtl.data import dataset_class
    from fastmtl.engine.evaluate import evaluate

    split = dataset_class(args.kind or "auto", args.data_root).resolve_split(args.split)
    report = evaluate(args.checkpoint, args.data_root, split, args.out, kind=args.kind, batch_size=args.batch_size,
                      num_workers=args.workers, device=_device(args.device))  # fmt: skip
    print(f"report: {args.out}/metrics.json")
    return 0 if report else 1


def _cmd_predict(args: argparse.Namespace) -> int:
    from fastmtl.engine.predict import predict

    summary = predict(args.checkpoint, args.input, args.output, batch_size=args.batch_size, num_workers=args.workers,
                      device=_device(args.device), overlays=args.overlays, threshold=args.threshold,
                      img_size=args.img_size, optimize=not args.no_optimize, compile=args.compile)  # fmt: skip
    return 1 if summary.n_failed and not summary.n_images else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from fastmtl.engine.export import export

    path = export(args.checkpoint, args.output, format=args.format, img_size=args.img_size,
                  batch_size=args.batch_size, dynamic_batch=not args.static_batch, check=not args.no_check,
                  device=_device(args.device))  # fmt: skip
    print(f"exported {path}" + ("" if args.no_check else " (outputs match the eager model)"))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from fastmtl.engine.info import format_info, system_info

    print(format_info(system_info()))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fastmtl.engine.demo import run_demo

    result = run_demo(args.data_root, args.out, device=args.device, overrides=args.overrides, resume=args.resume)
    paths, train = result["paths"], result["train"]
    print(f"\ndemo done: {train['global_step']} training steps, best {train['selection_metric']} = "
          f"{train['best_value']:.1f}")  # fmt: skip
    print(f"  checkpoint:       {paths['checkpoint']}")
    print(f"  learning curves:  {paths['curves']} (per-epoch log: {paths['log']})")
    if paths["report"]:
        print(f"  evaluation:       {paths['report']} (+ roc.png, confusion.png, worst/)")
    print(f"  predictions:      {paths['predictions']} (masks/, overlays/, probabilities.csv)")
    return 0


_COMMANDS = {
    "train": _cmd_train,
    "eval": _cmd_eval,
    "predict": _cmd_predict,
    "export": _cmd_export,
    "info": _cmd_info,
    "demo": _cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastmtl`` console script; returns the exit status.

    fastmtl's own errors (ValueError and its subclasses such as CheckpointError and the non-finite-loss error,
    FileNotFoundError and other OSErrors about paths) print ``fastmtl: error: <message>`` and return 2.
    """
    args = build_parser().parse_args(argv)
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be a positive int, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        return _COMMANDS[args.command](args)
    except (ValueError, ImportError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        print(f"fastmtl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastmtl: interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
