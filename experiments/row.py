"""One row of a results table: trains one (experiment, model, seed[, variant]) with
:func:`fastmtl.engine.train.job.train`, time-boxed and resumable when the experiment says so, and writes its
result JSON (the selected epoch's validation metrics, cost, the command that regenerates it, the resolved config,
the commit and versions) and its figures (learning curves, validation ROC, example overlays)."""

from __future__ import annotations

import argparse
import platform
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

from experiments.table import EXPERIMENTS, REPO, VARIANTS, git

__all__ = ["canonical_command", "run_experiment", "selected_metrics"]

KEEP = ("dsc", "ji", "global_dice", "acc", "sen", "spe", "auc_mean", "loss", "n_seg_images", "n_cls_images")


def selected_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """The headline validation metrics of one history row (``val_`` keys), per-class AUC/Dice included."""
    val = {k[4:]: v for k, v in row.items() if k.startswith("val_")}
    from fastmtl.files import json_safe

    keep = {k: v for k, v in val.items() if k in KEEP or k.startswith(("auc_", "dsc_", "ji_"))}
    return json_safe(keep)


def _figures(run_dir: Path, config: Any, data_root: Path, stem: str, figures: Path, roc: bool) -> None:
    """Evaluates best.safetensors on the run's validation split: ROC curves (melanoma / SK, or the OCT classes)
    for a model that classifies, and example overlays (image, ground truth, prediction) for one that segments."""
    import numpy as np
    from torch.utils.data import DataLoader

    from fastmtl.checkpoint.rundir import RunDir
    from fastmtl.checkpoint.store import load_model
    from fastmtl.engine.evaluate.job import predict_sample, run_evaluation
    from fastmtl.engine.evaluate.plots import plot_examples, plot_roc
    from fastmtl.engine.train.loaders import build_run_data

    model, _ = load_model(RunDir(run_dir).best_weights)
    data = build_run_data(config, data_root)
    if roc and model.config.cls_head != "none":
        loader = DataLoader(data.val, batch_size=config.eval_batch_size, num_workers=0)
        seg_classes = max(int(model.config.seg_classes), 1)  # a classification-only model yields no seg logits
        state = run_evaluation(model, loader, seg_classes=seg_classes, class_names=data.class_names)
        names = [n for n in data.class_names if n != "nevus"]  # nevus = neither; the paper reports MEL and SK
        cols = [data.class_names.index(n) for n in names]
        probs, labels = state.cls.probs.numpy()[:, cols], state.cls.labels.numpy()[:, cols]
        plot_roc(np.asarray(probs), np.asarray(labels), names, figures / f"{stem}-roc.png")
    # up to 6 validation images with foreground, evenly spaced over the split: the same ones for every model
    candidates = [i for i, has in enumerate(data.val.has_masks) if has and bool(data.val[i]["mask"].any())]
    picks = [candidates[round(k * (len(candidates) - 1) / 5)] for k in range(6)] if len(candidates) > 6 else candidates
    rows = []
    for i in dict.fromkeys(picks):
        sample = data.val[i]
        image, pred = predict_sample(model, sample["image"], config.data.normalize, "cpu")
        if pred is None:  # a classification-only model: nothing to overlay
            return
        rows.append((sample["id"], image, sample["mask"].numpy(), pred))
    if rows:
        plot_examples(rows, figures / f"{stem}-examples.png", data.seg_class_names)


def run_experiment(args: argparse.Namespace) -> Path:
    """Trains one (experiment, model, seed) and writes its result JSON and figures; returns the JSON path."""
    import torch

    from fastmtl.checkpoint.rundir import RunDir
    from fastmtl.engine.train.config_file import load_config
    from fastmtl.engine.train.job import train
    from fastmtl.files import atomic_write_json

    exp = EXPERIMENTS[args.exp]
    config_file = exp["config"]
    variant = VARIANTS[args.variant][1] if args.variant else []
    limit = exp.get("time_limit", 0.0) if args.time_limit is None else args.time_limit
    boxed = [f"time_limit_min={limit}"] if limit else []
    overrides = [f'model="{args.model}"', f"seed={args.seed}", *exp.get("overrides", []), *variant, *args.set, *boxed]
    config = load_config(config_file, overrides)
    data_root = Path(args.data_root or exp["data_root"])
    if not data_root.exists():
        raise SystemExit(f"data folder {data_root} not found; pass --data-root")
    name = args.model + (f"+{args.variant}" if args.variant else "")
    stem = f"{args.exp}-{name}-s{args.seed}"
    # A time-boxed run lives in a fixed folder so that the same command picks it up again; others start afresh.
    run_dir = Path(args.runs) / (stem if limit else f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    resume = bool(limit) and RunDir(run_dir).last_weights.is_file()
    torch.set_num_threads(args.threads) if args.threads else None
    if exp.get("gpu") and not torch.cuda.is_available():
        print("warning: no CUDA device; the paper protocol on CPU takes days (it still runs, in chunks)", flush=True)
    started = time.perf_counter()
    summary = train(config, data_root, run_dir, resume=resume)
    wall = _add_wall(run_dir, time.perf_counter() - started, resume)
    if summary["stopped_early"]:
        print(f"{stem}: {summary['epochs_completed']}/{config.optim.epochs} epochs after {wall / 60:.1f} min in all; "
              "run the same command again to continue", flush=True)  # fmt: skip
        return run_dir
    history = summary["history"]
    best = next(r for r in history if r["epoch"] == summary["best_epoch"])
    train_seconds = sum(r.get("time_s", 0.0) for r in history)
    steps = history[-1]["global_step"]
    figures = Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RunDir(run_dir).curves, figures / f"{stem}-curves.png")
    _figures(run_dir, config, data_root, stem, figures, roc=not args.no_roc)
    result = {
        "experiment": args.exp,
        "model": args.model,
        "variant": args.variant,
        "seed": args.seed,
        "selection_metric": summary["selection_metric"],
        "best_epoch": summary["best_epoch"],
        "epochs": len(history),
        "global_steps": steps,
        "train_images": steps * config.optim.batch_size,
        "metrics": selected_metrics(best),
        "last_epoch_metrics": selected_metrics(history[-1]),
        "wall_time_s": round(wall, 1),
        "train_time_s": round(train_seconds, 1),
        "train_images_per_s": round(steps * config.optim.batch_size / train_seconds, 2) if train_seconds else None,
        "command": canonical_command(args),
        "config_file": str(config_file.relative_to(REPO)),
        "time_limit_min": limit,
        "overrides": overrides,
        "config": config.to_dict(),
        "data_root": str(data_root),
        "run_dir": str(run_dir),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "gpu": torch.cuda.get_device_name() if config.run.device != "cpu" and torch.cuda.is_available() else None,
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(args.results) / args.exp / f"{name}-s{args.seed}.json"
    atomic_write_json(out, result)
    print(f"wrote {out} (best epoch {result['best_epoch']}, {wall:.0f} s)", flush=True)
    return out


def _add_wall(run_dir: Path, seconds: float, resumed: bool) -> float:
    """Wall time of the run over all the commands that trained it (kept in the run folder)."""
    record = run_dir / "wall_s.txt"
    total = seconds + (float(record.read_text()) if resumed and record.is_file() else 0.0)
    record.write_text(f"{total:.1f}\n")
    return total


def canonical_command(args: argparse.Namespace) -> str:
    """The command that regenerates a row: what decides the result, without where outputs went."""
    parts = ["python", "experiments/run.py", args.exp, "--model", args.model, "--seed", str(args.seed)]
    parts += ["--variant", args.variant] if args.variant else []
    for item in args.set:
        parts += ["--set", item]
    parts += ["--time-limit", f"{args.time_limit:g}"] if args.time_limit is not None else []
    parts += ["--threads", str(args.threads)] if args.threads else []
    parts += ["--data-root", args.data_root] if args.data_root else []
    return " ".join(shlex.quote(p) for p in parts)
