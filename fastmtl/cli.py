"""The ``fastmtl`` command line: argparse subcommands only; the work happens in :mod:`fastmtl.engine`.

    fastmtl train   --config FILE|quick|demo [--data-root DIR] [--out DIR] [--resume [--resume-other-data]] [--skip-bad] [--set KEY=VALUE ...] [--device auto|cpu|cuda]
    fastmtl eval    --checkpoint FILE [--data-root DIR] [--split training|validation|test|train|val] --out DIR [--kind KIND] [--batch-size N] [--workers N] [--device DEVICE]
    fastmtl predict --checkpoint FILE --input PATH [PATH ...] --out DIR [--batch-size N] [--workers N] [--overlays] [--threshold P] [--img-size N] [--device DEVICE] [--no-optimize] [--compile] [--precision auto|fp32|bf16|fp16|int8] [--runtime auto|torch|onnxruntime|openvino] [--calibrate PATH ...]
    fastmtl export  --checkpoint FILE [--format aoti|onnx] --out FILE [--img-size N] [--batch-size N] [--static-batch] [--no-check] [--device DEVICE] [--precision fp32|int8] [--calibrate PATH ...]
    fastmtl info
    fastmtl check-data --data-root DIR [--split training|validation|test|train|val] [--kind KIND] [--out FILE]
    fastmtl demo    [--data-root DIR] [--out DIR] [--device auto|cpu|cuda] [--set KEY=VALUE ...] [--resume]

Every command writes to ``--out`` (``--output`` is accepted as an alias); options are never abbreviated. Paths,
numbers, dataset kinds, the packages an export needs and an ``--img-size`` against the checkpoint's own rule are
checked before PyTorch is imported (:mod:`fastmtl.cli_checks`), so a mistake is answered at once. Bad input (a
missing file, an unknown option or model, a mismatched checkpoint, a diverging loss) prints one ``fastmtl: error:
...`` line to stderr and exits with status 2; an interrupted run exits with 130.
"""  # noqa: E501 - the synopsis lines are compared with the parser by tests/test_cli.py

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastmtl.cli_checks import check_args
from fastmtl.options import DEVICES, EXPORT_FORMATS, EXPORT_PRECISIONS, MAX_EXPORT_BATCH, PRECISIONS, RUNTIMES

__all__ = ["build_parser", "main"]

_SPLITS = ("training", "validation", "test", "train", "val")  # each dataset kind resolves these to its own names
_DEVICE_HELP = "auto (CUDA when present), cpu, cuda, cuda:1 ..."


def _parser(sub: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", allow_abbrev=False)


def _add_out(p: argparse.ArgumentParser, help: str, **kwargs: Any) -> None:
    p.add_argument("--out", "--output", dest="out", metavar="DIR" if "FILE" not in help else "FILE", help=help,
                   **kwargs)  # fmt: skip


def _add_loader(p: argparse.ArgumentParser, batch: int) -> None:
    p.add_argument("--batch-size", type=int, default=batch, metavar="N", help=f"images per batch (default {batch})")
    p.add_argument("--workers", type=int, metavar="N",
                   help="image decoding processes (0: in the main process; default: sized from the cores "
                        "available, none on a CPU with up to 4 cores); torch gets the remaining cores")  # fmt: skip


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "train", "train a model (the paper's protocol or a preset)")
    p.add_argument("--config", required=True, metavar="FILE|PRESET",
                   help="TOML config file, or a preset shipped in fastmtl/configs/ (quick, demo, "
                        "isic2017_paper, ...)")  # fmt: skip
    p.add_argument("--data-root", metavar="DIR", help="dataset folder (kind auto-detected); omit for synthetic data")
    _add_out(p, "run folder: checkpoints, logs, curves (default: runs/train)", default="runs/train")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out exactly where it stopped")
    p.add_argument("--resume-other-data", action="store_true", help="with --resume: go on although the data differs")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out cases with an unreadable or mismatched image / mask (see split.json)")  # fmt: skip
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=1e-4 --set model.options.dfe=none (or "
                        "the flat keys lr=1e-4, model_options.dfe=none)")  # fmt: skip
    p.add_argument("--device", choices=DEVICES, help="override the config's device")


def _add_check_data(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "check-data", "check every image, mask and label of a dataset split before training on it")
    p.add_argument("--data-root", required=True, metavar="DIR", help="dataset folder (kind auto-detected)")
    p.add_argument("--split", default="training", choices=_SPLITS, help="split to check (default: training)")
    p.add_argument("--kind", default="auto", help="dataset kind (default: detected from the folder)")
    _add_out(p, "also write the findings to FILE as CSV: path, problem, detail (default: printed only)")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "eval", "evaluate a checkpoint on a dataset split with the paper's metrics")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a .safetensors file written by fastmtl")
    p.add_argument("--data-root", metavar="DIR", help="dataset folder (kind auto-detected); omit for synthetic data")
    p.add_argument("--split", default="test", choices=_SPLITS, help="split to evaluate, any kind (default: test)")
    _add_out(p, "report folder: metrics.json, plots, worst cases", required=True)
    p.add_argument("--kind", help="dataset kind (default: detected from the folder)")
    _add_loader(p, batch=8)
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "predict", "predict masks and class probabilities for images")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a .safetensors file written by fastmtl")
    p.add_argument("--input", required=True, nargs="+", metavar="PATH",
                   help="image files, folders, glob patterns or a text file listing images")  # fmt: skip
    _add_out(p, "output folder: masks/, probabilities.csv, failures.csv, overlays/", required=True)
    _add_loader(p, batch=8)
    p.add_argument("--overlays", action="store_true", help="also write the predictions drawn on the images")
    p.add_argument("--threshold", type=float, default=0.5, metavar="P",
                   help="probability above which a pixel or a label is positive (default 0.5)")  # fmt: skip
    p.add_argument("--img-size", type=int, metavar="N", help="inference side (default: the checkpoint's)")
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    p.add_argument("--no-optimize", action="store_true", help="run the model as saved (no BN folding etc.)")
    p.add_argument("--compile", action="store_true", help="torch.compile the optimized model (slow to start)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="default auto: bf16 on CUDA; on a CPU the fastest path within tolerance of fp32, measured "
                        "for jobs of 1000+ images and cached, else fp32 (docs/INFERENCE.md)")  # fmt: skip
    p.add_argument("--runtime", choices=RUNTIMES, default="auto",
                   help="runs a CPU --precision (default auto: OpenVINO, else ONNX Runtime, for int8)")  # fmt: skip
    p.add_argument("--calibrate", nargs="+", metavar="PATH", help="images to calibrate int8 / auto on (default: input)")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "export", "export a checkpoint as an AOTInductor package (.pt2) or an ONNX file")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a .safetensors file written by fastmtl")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="aoti", help="aoti (.pt2, default) or onnx")
    _add_out(p, "FILE to write (.pt2 or .onnx)", required=True)
    p.add_argument("--img-size", type=int, metavar="N", help="input side (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="example batch (the only one with --static-batch; default 1)")  # fmt: skip
    p.add_argument("--static-batch", action="store_true", help=f"fix the batch size instead of 1..{MAX_EXPORT_BATCH}")
    p.add_argument("--no-check", action="store_true", help="skip the parity check against the eager model")
    p.add_argument("--device", default="cpu", help="compile for cpu (default), cuda, cuda:1 ...")
    p.add_argument("--precision", choices=EXPORT_PRECISIONS, default="fp32", help="int8: ONNX only, needs --calibrate")
    p.add_argument("--calibrate", nargs="+", metavar="PATH", help="images to calibrate an int8 export on")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "demo", "train briefly, evaluate and predict: the whole pipeline in a few minutes")
    p.add_argument("--data-root", metavar="DIR", help="dataset folder (default: the embedded synthetic lesions)")
    _add_out(p, "output folder (default: fastmtl-demo)", default="fastmtl-demo")
    p.add_argument("--device", choices=DEVICES, default="auto", help="where to run (default auto)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the demo preset")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo in --out")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with the six subcommands."""
    parser = argparse.ArgumentParser(
        prog="fastmtl",
        description="ResFormer-MTL: lesion segmentation + classification with one network.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for PyTorch (default: torch's choice); use 1 per process when other jobs share the cores",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{train,eval,predict,export,info,check-data,demo}"
    )
    _add_train(sub)
    _add_eval(sub)
    _add_predict(sub)
    _add_export(sub)
    _parser(sub, "info", "versions, devices and registered models")
    _add_check_data(sub)
    _add_demo(sub)
    return parser


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _device(name: str) -> str:
    from fastmtl.runtime import resolve_device

    return str(resolve_device(name)) if name in ("auto", "cuda") else name


def _cmd_train(args: argparse.Namespace) -> int:
    from fastmtl.engine.train.config_file import load_config  # no PyTorch: a bad config is answered at once

    overrides = [*args.overrides, *([f"device={args.device}"] if args.device else [])]
    overrides += ["skip_bad=true"] if args.skip_bad else []
    config = load_config(args.config, overrides)
    if config.data.kind == "auto" and args.data_root is not None:
        from fastmtl.options import detect_kind

        detect_kind(args.data_root)  # a folder of no known layout is answered before PyTorch is imported
    from fastmtl.engine.train.job import train

    _fit_threads(args, 0)  # the loader's workers mostly wait on the model
    result = train(config, args.data_root, args.out, resume=args.resume, other_data=args.resume_other_data)
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
    from fastmtl.checkpoint.rundir import RunDir

    run_dir = RunDir(result["out_dir"])
    print(f"logs and curves: {run_dir.log_csv}, {run_dir.curves}")


def _fit_threads(args: argparse.Namespace, workers: int) -> None:
    """Torch threads sized from the cores available and idle beside ``workers``, unless --threads or
    OMP_NUM_THREADS says otherwise (torchrun sets the latter)."""
    from fastmtl.runtime import fit_threads

    if args.threads is None and not os.environ.get("OMP_NUM_THREADS"):
        fit_threads(workers)


def _fit_cpu(args: argparse.Namespace) -> tuple[str, int]:
    """(device, workers): decoding workers and torch threads sized from the cores available, unless given."""
    from fastmtl.runtime import default_workers

    device = _device(args.device)
    workers = default_workers(device) if args.workers is None else args.workers
    _fit_threads(args, workers)
    return device, workers


def _cmd_eval(args: argparse.Namespace) -> int:
    from fastmtl.data import dataset_class
    from fastmtl.engine.evaluate.job import evaluate

    split = dataset_class(args.kind or "auto", args.data_root).resolve_split(args.split)
    device, workers = _fit_cpu(args)
    report = evaluate(args.checkpoint, args.data_root, split, args.out, kind=args.kind, batch_size=args.batch_size,
                      num_workers=workers, device=device)  # fmt: skip
    print(f"report: {args.out}/metrics.json")
    return 0 if report else 1


def _cmd_predict(args: argparse.Namespace) -> int:
    from fastmtl.engine.predict.job import predict

    device, workers = _fit_cpu(args)
    summary = predict(args.checkpoint, args.input, args.out, batch_size=args.batch_size, num_workers=workers,
                      device=device, overlays=args.overlays, threshold=args.threshold,
                      img_size=args.img_size, optimize=not args.no_optimize, compile=args.compile,
                      precision=args.precision, calibrate=args.calibrate, runtime=args.runtime)  # fmt: skip
    return 1 if summary.n_failed and not summary.n_images else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from fastmtl.inference.export import export

    path = export(args.checkpoint, args.out, format=args.format, img_size=args.img_size,
                  batch_size=args.batch_size, dynamic_batch=not args.static_batch, check=not args.no_check,
                  device=_device(args.device), precision=args.precision, calibrate=args.calibrate)  # fmt: skip
    checked = " (outputs match the eager model)" if args.precision == "fp32" else " (int8, within tolerance)"
    print(f"exported {path}" + ("" if args.no_check else checked))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from fastmtl.engine.info import format_info, system_info

    print(format_info(system_info()))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fastmtl.checkpoint.rundir import RunDir
    from fastmtl.engine.demo import run_demo

    _fit_threads(args, 0)
    result = run_demo(args.data_root, args.out, device=args.device, overrides=args.overrides, resume=args.resume)
    paths, train = result["paths"], result["train"]
    if train["stopped_early"]:
        print(f"\ndemo stopped at its time limit: {train['global_step']} training steps; --resume continues it")
    else:
        print(f"\ndemo done: {train['global_step']} training steps, best {train['selection_metric']} = "
              f"{train['best_value']:.1f}")  # fmt: skip
    if Path(paths["checkpoint"]).is_file():
        print(f"  checkpoint:       {paths['checkpoint']}")
    print(f"  learning curves:  {paths['curves']} (per-epoch log: {paths['log']})")
    if paths["report"]:
        print(f"  evaluation:       {paths['report']} (+ roc.png, confusion.png, worst/)")
        print(f"  same evaluation:  {paths['eval_again']}")
    if paths["predictions"]:
        print(f"  predictions:      {paths['predictions']} (masks/, overlays/, probabilities.csv)")
    kept = RunDir(Path(paths["checkpoint"]).parent).has_training_state()
    kept = "" if kept else "; training state (last.*) removed"
    print(f"  disk use:         {result['disk_bytes'] / 1e6:,.1f} MB in {args.out}{kept}")
    print(f"  wall time:        {result['seconds'] / 60:.1f} min")
    if result["synthetic"]:
        print("  note: trained on synthetic lesions; its outputs on real images mean nothing (--data-root DIR: yours)")
    return 0


def _cmd_check_data(args: argparse.Namespace) -> int:
    from fastmtl.data import check_data, write_report

    findings = check_data(args.data_root, args.split, kind=args.kind, include_notes=True)
    if args.out is not None:
        write_report(findings, args.out)
    for p in findings:
        print(f"{'note: ' if p.note else ''}{p.problem:<22} {p.path}: {p.detail}")
    problems = [p for p in findings if not p.note]
    report = f"report: {args.out}" if args.out else "--out FILE writes them to a CSV file" if findings else ""
    if problems:
        raise ValueError(f"{len(problems)} problem(s) in {args.data_root} ({args.split}); {report}")
    notes = f", {len(findings)} note(s)" if findings else ""
    print(f"{args.data_root} ({args.split}): no problems{notes}" + (f"; {report}" if report else ""))
    return 0


_COMMANDS = {
    "train": _cmd_train,
    "eval": _cmd_eval,
    "predict": _cmd_predict,
    "export": _cmd_export,
    "info": _cmd_info,
    "check-data": _cmd_check_data,
    "demo": _cmd_demo,
}


_WORKER = "Original Traceback"  # what PyTorch puts in an exception re-raised from a DataLoader worker


def _error_line(error: BaseException) -> str:
    """The message of ``error``; for one re-raised from a DataLoader worker (which PyTorch wraps with the worker's
    traceback), the original exception's own line, which names the file."""
    text = str(error).strip()
    if _WORKER in text:
        text = re.sub(r"^[\w.]*(Error|Exception|Warning)\w*: ", "", text.splitlines()[-1].strip())
    return text or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastmtl`` console script; returns the exit status.

    fastmtl's own errors (ValueError and its subclasses such as CheckpointError and the non-finite-loss error,
    FileNotFoundError and other OSErrors about paths) print ``fastmtl: error: <message>`` and return 2.
    """
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        return _COMMANDS[args.command](args)
    except (ValueError, ImportError, OSError) as e:  # OSError: paths, permissions, unreadable images
        print(f"fastmtl: error: {_error_line(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if _WORKER not in str(e):
            raise
        print(f"fastmtl: error: {_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastmtl: interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
