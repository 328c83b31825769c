"""Reproducible accuracy experiments: one command per table row, and a report builder for docs/RESULTS.md.

    python experiments/run.py isic --model resformer_mtl --seed 1       # trains, writes one result JSON
    python experiments/run.py isic --model resformer_mtl --variant head1 --seed 1     # an ablation
    python experiments/run.py oct --model resformer_mtl --seed 1
    python experiments/run.py retouch-sample --model resformer_mtl --seed 1
    python experiments/run.py isic-paper --model resformer_mtl --seed 1234            # GPU, 9 min per command
    python experiments/run.py isic-paper --model resformer_mtl --seed 1234 --budget-min 8.5 --out OUT  # one command
    python experiments/run.py report                                    # rebuilds the tables in docs/RESULTS.md

A run trains with :func:`fastmtl.engine.train.job.train` on its experiment's config (plus the variant's and
``--set`` overrides, recorded), keeps its run folder under ``--runs`` (default /tmp, never the repository) and
writes ``experiments/results/<exp>/<model>[+<variant>]-s<seed>.json``: the validation metrics of the selected
(best validation JI) epoch, wall time, training throughput, the command that regenerates it, the resolved config,
the git commit and versions. It also writes the learning curves, a validation ROC plot (models that classify) and
example overlays (models that segment) into ``docs/figures/``. A time-boxed run (``--time-limit``; the default for
``isic-paper``) stops after that many minutes, saves, and the same command resumes it; its JSON is written when
it completes. ``report`` reads only the result JSONs and rewrites the part of RESULTS.md between the markers.

The paper's protocol in one command (``isic-paper`` with ``--budget-min`` or ``--out``): the whole protocol
(150 epochs, 224 px, batch 8, AdamW + poly) trained and evaluated inside one wall-clock budget on the fast path
(the training split decoded once onto the device and augmented there, the step without host round trips,
bf16 + channels-last, ``torch.compile`` with CUDA graphs on CUDA; see :mod:`experiments.protocol`). It stops
cleanly at the budget with what it reached and says so, evaluates the model selected on the validation split
there and on every ``--eval DIR[:SPLIT]`` folder, prints the epochs/s it sustained and the projected time of
150 epochs, and writes a bring-back folder (weights stay in the scratch run folder under ``--runs``):

    OUT/summary.json   OUT/metrics.json   OUT/eval-<name>.json (one per --eval)   OUT/log.csv   OUT/curves.png

GPU (the paper's protocol; the data copied into the checkout's git-ignored .gpu-data/, results in gpu-out/):

    python experiments/run.py isic-paper --model resformer_mtl --seed 1234 --budget-min 8.5 \
        --data-root .gpu-data/isic2017 --out gpu-out/paper \
        [--eval .gpu-data/isic2017:validation --eval .gpu-data/isic2017:test]

One epoch's cost (what ``bench.gpu_suite`` calls; ``--epochs 1`` plans one epoch, the poly schedule included):

    python experiments/run.py isic-paper --model resformer_mtl --seed 1234 --epochs 1 --budget-min 5 \
        --data-root DIR --out OUT

CPU dry run at a tiny size (seconds to a few minutes):

    python experiments/run.py isic-paper --model resformer_mtl --seed 1 --epochs 2 --budget-min 10 \
        --data-root ../shared/data/isic2017 --out /tmp/paper-dry --limit-images 16 \
        --set img_size=32 --set store_size=32 --set batch_size=2 --set max_val_steps=2 --threads 1

``OUT/summary.json`` (rewritten after every validation with ``status`` "running: epoch N validated", then "done")
keys: ``status``, ``epochs_done``, ``epochs_planned``, ``epochs_done_of_paper`` ("N of 150", "+K steps" of an epoch
the budget cut), ``schedule`` (``--schedule budget``: the planned steps, their share of the paper's, every
(re)plan), ``final_lr``, ``partial_epoch``, ``rate_from``, ``val_cold_s``, ``compile_counters``, ``steps_done``,
``stopped_by_budget``, ``budget_min``, ``wall_s`` (the whole command), ``train_s`` (training, validation
excluded), ``setup_and_train_s``, ``epoch_s`` (the last epoch's training wall time), ``first_epoch_s``
(compilation included), ``images_per_epoch``, ``images_per_full_epoch`` (without ``--limit-images``),
``train_images_per_s`` (steady state, after the warm-up steps), ``train_images_per_s_incl_warmup``, ``warmup_s``,
``val_s`` (one validation, warm: the first is timed twice), ``val_share`` (validation's share of the training time
at ``val_every_epochs``), ``epochs_per_s``, ``projected_150_epochs_min`` (150 full epochs at the steady rate + the
warm-up + the validations, this device), ``train_gflops_per_image`` (forward + backward), ``achieved_tflops``,
``tflops_needed_for_150_epochs_in_9_min``, ``layer_paths`` (which implementation each kind of layer takes, and the
step: compiled or eager), ``selected`` ("best" or "last"), ``selected_epoch``, ``metrics`` (headline validation
metrics of the selected model: dsc, ji, global_dice, acc, sen, spe, auc_mean, auc_melanoma,
auc_seborrheic_keratosis, loss, n_seg_images, n_cls_images), ``last_epoch_metrics``, ``eval`` ({name: {file,
headline metrics} or {error}}), ``files``, ``run_dir``, ``device``, ``torch``, ``torch_threads``, ``config``,
``command``, ``git_commit``, ``python``. Exit status 0 also when the budget stopped the run
(``stopped_by_budget`` says so); bad input exits with a message.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STARTED = time.monotonic()  # --budget-min counts from here: torch's import and the data's decoding are inside it

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python experiments/run.py` puts experiments/ first, not the checkout: experiments.*
    sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
# name -> config file, default data folder, fixed overrides, default time limit per command (minutes, 0 = none),
# and whether it is meant for a GPU (a warning without one)
EXPERIMENTS = {
    "isic": {"config": REPO / "experiments" / "configs" / "isic_cpu.toml", "data_root": DATA / "isic2017"},
    "oct": {"config": REPO / "experiments" / "configs" / "oct_cpu.toml", "data_root": DATA / "oct"},
    "retouch-sample": {
        "config": REPO / "experiments" / "configs" / "retouch_sample_cpu.toml",
        "data_root": DATA / "oct",
    },
    # SPEC section 5 on one GPU: bf16 autocast (amp = "auto" in the config), channels-last, decoded images cached;
    # each command trains at most 9 minutes, saves, and the same command resumes until the 150 epochs are done.
    "isic-paper": {
        "config": REPO / "fastmtl" / "configs" / "isic2017_paper.toml",
        "data_root": DATA / "isic2017",
        "overrides": ["channels_last=true", "num_workers=8", "progress=false"],
        "time_limit": 9.0,
        "gpu": True,
    },
}
MODELS = ("resformer_mtl", "resformer_mtl_nodfe", "resformer_mtl_serial", "unet_resnet34_mtl", "unet_resnet34",
          "resnet34_cls")  # fmt: skip
# (column title, metric key in the result JSON); a metric the run did not produce prints as "-".
COLUMNS = {
    "isic": [("DSC", "dsc"), ("JI", "ji"), ("global Dice", "global_dice"), ("Acc", "acc"), ("Sen", "sen"),
             ("Spe", "spe"), ("MEL AUC", "auc_melanoma"), ("SK AUC", "auc_seborrheic_keratosis")],
    "oct": [("DSC", "dsc"), ("JI", "ji"), ("global Dice", "global_dice"), ("Acc", "acc"), ("Sen", "sen"),
            ("Spe", "spe"), ("fluid AUC", "auc_fluid")],
}  # fmt: skip
COLUMNS["isic-paper"] = COLUMNS["isic"]
COLUMNS["retouch-sample"] = [("DSC", "dsc"), ("JI", "ji"), ("IRF DSC", "dsc_irf"), ("SRF DSC", "dsc_srf"),
                             ("PED DSC", "dsc_ped"), ("global Dice", "global_dice")]  # fmt: skip
# Ablations of a model that are config changes rather than registered models: name -> (label, overrides).
# (DFE on/off and parallel/serial fusion are the registered models resformer_mtl_nodfe / resformer_mtl_serial.)
VARIANTS = {
    "head1": ("one-level classification head (e3 only)", ['model_options={cls_head="single"}']),
    "alpha0.1": ("alpha = 0.1", ["alpha=0.1"]),
    "alpha1": ("alpha = 1.0", ["alpha=1.0"]),
}
TITLES = {
    "isic": "ISIC 2017 (validation split carved from Training)",
    "oct": "Duke DME fluid segmentation (background/fluid head, 2 validation subjects)",
    "retouch-sample": "RETOUCH sample, 4-class configuration (qualitative: 6 training / 3 validation B-scans)",
    "isic-paper": "ISIC 2017, the paper's protocol on one GPU (224 px, 150 epochs)",
}
BEGIN, END = "<!-- results:begin (generated by experiments/run.py report) -->", "<!-- results:end -->"
KEEP = ("dsc", "ji", "global_dice", "acc", "sen", "spe", "auc_mean", "loss", "n_seg_images", "n_cls_images")


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
    import sys

    import torch

    from experiments.protocol import parse_eval, run_protocol
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
    extra = {"command": shlex.join(["python", "experiments/run.py", *sys.argv[1:]]) if args.argv is None
             else shlex.join(["python", "experiments/run.py", *args.argv]),
             "git_commit": _git("rev-parse", "HEAD"), "python": platform.python_version()}  # fmt: skip
    print(f"{stem}: training into {run_dir}, results into {out}", flush=True)
    return run_protocol(config, data_root, out, run_dir, budget_min=args.budget_min, reserve_s=args.reserve_s,
                        evals=evals, limit_images=args.limit_images, extra=extra, schedule=args.schedule,
                        started=STARTED if args.argv is None else None,  # a command: from its start
                        log=lambda line: print(line, flush=True))  # fmt: skip


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


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
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
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


def load_results(results_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """``{experiment: [result, ...]}`` from ``<results_dir>/<exp>/*.json``, rows in model order, then seed."""
    order = {m: i for i, m in enumerate(MODELS)}
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(Path(results_dir).glob("*/*.json")):
        row = json.loads(path.read_text())
        out.setdefault(row["experiment"], []).append(row)
    for rows in out.values():
        rows.sort(key=lambda r: (order.get(r["model"], len(order)), r.get("variant", ""), r["model"], r["seed"]))
    return out


def _fmt(value: Any, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _name(row: dict[str, Any]) -> str:
    return row["model"] + (f"+{row['variant']}" if row.get("variant") else "")


def _mean_sd(runs: list[dict[str, Any]], key: str) -> str:
    """ "mean ± sample sd" over seeds (the value alone for one run); "-" when a run lacks the metric."""
    values = [r["metrics"].get(key) for r in runs]
    if any(v is None for v in values):
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.1f} ± {sd:.1f}"


def build_table(exp: str, rows: list[dict[str, Any]]) -> str:
    """One Markdown table: a row per result (model, seed) with the metrics, budget and cost; a model with several
    seeds gets a "mean ± sd" row after its runs."""
    columns = COLUMNS[exp]
    head = ["model", "seed", *(c for c, _ in columns), "best ep.", "train img", "img/s", "wall (min)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in dict.fromkeys(map(_name, rows)):
        runs = [r for r in rows if _name(r) == name]
        for r in runs:
            cells = [f"`{name}`", str(r["seed"]), *(_fmt(r["metrics"].get(key)) for _, key in columns)]
            cells += [f"{r['best_epoch']}/{r['epochs']}", str(r["train_images"]), _fmt(r.get("train_images_per_s"))]
            lines.append("| " + " | ".join([*cells, _fmt(r["wall_time_s"] / 60)]) + " |")
        if len(runs) > 1:
            cells = [f"`{name}`", f"mean ± sd of {len(runs)}", *(_mean_sd(runs, k) for _, k in columns)]
            lines.append("| " + " | ".join(cells) + " |" + " |" * 4)
    return "\n".join(lines)


ABLATIONS = {  # row name -> what it changes relative to resformer_mtl
    "resformer_mtl": "reference: parallel fusion, DFE, two-level head, alpha 0.25",
    "resformer_mtl_nodfe": "DFE off",
    "resformer_mtl_serial": "serial fusion",
    **{f"resformer_mtl+{v}": label for v, (label, _) in VARIANTS.items()},
}


def _delta(value: float | None, reference: float | None) -> str:
    return "-" if value is None or reference is None else f"{value - reference:+.1f}"


def build_ablation_table(exp: str, rows: list[dict[str, Any]]) -> str:
    """Mean ± sd over seeds (the value alone for one seed) of each ResFormer-MTL ablation that has runs, with the JI
    difference to the reference seed by seed (paired: same split, same seeds); empty when only the reference ran."""
    groups = {name: [r for r in rows if _name(r) == name] for name in ABLATIONS}
    groups = {name: runs for name, runs in groups.items() if runs}
    if len(groups) < 2 or "resformer_mtl" not in groups:
        return ""
    reference = {r["seed"]: r["metrics"].get("ji") for r in groups["resformer_mtl"]}
    columns = COLUMNS[exp]
    head = ["run", "change", "seeds", *(c for c, _ in columns), "ΔJI per seed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in groups.items():
        deltas = [_delta(r["metrics"].get("ji"), reference.get(r["seed"])) for r in runs]
        cells = [f"`{name}`", ABLATIONS[name], ",".join(str(r["seed"]) for r in runs)]
        cells += [_mean_sd(runs, key) for _, key in columns]
        cells.append("" if name == "resformer_mtl" else " / ".join(deltas))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_report(results: dict[str, list[dict[str, Any]]]) -> str:
    """The generated block of RESULTS.md: per experiment a table, then the commands that produced each row."""
    parts = [BEGIN, ""]
    for exp in EXPERIMENTS:
        rows = results.get(exp, [])
        parts.append(f"### {TITLES[exp]}\n")
        if not rows:
            parts.append("No runs yet.\n")
            continue
        models = [r for r in rows if not r.get("variant") and r["model"] != "resformer_mtl_serial"]
        parts += [build_table(exp, models), ""]
        ablations = build_ablation_table(exp, rows)
        if ablations:
            parts += ["Ablations of `resformer_mtl` (mean ± sd over seeds):\n", ablations, ""]
            order = {name: i for i, name in enumerate(ABLATIONS)}
            others = sorted((r for r in rows if r not in models), key=lambda r: (order.get(_name(r), 99), r["seed"]))
            parts += ["Their runs:\n", build_table(exp, others), ""] if others else []
        commits = sorted({r["git_commit"][:10] + ("+dirty" if r.get("git_dirty") else "") for r in rows})
        torches = sorted({r["torch"] for r in rows})
        total = sum(r["wall_time_s"] for r in rows) / 60
        parts.append(f"Commit {', '.join(commits)}; torch {', '.join(torches)}; {total:.0f} min wall in all.\n")
        parts.append("Commands (each regenerates its row and its JSON under `experiments/results/`):\n")
        parts += ["```"] + [r["command"] for r in rows] + ["```", ""]
    parts.append(END)
    return "\n".join(parts)


def write_report(results_dir: str | Path, markdown: str | Path) -> str:
    """Replaces the generated block of ``markdown`` (between the markers) with tables from ``results_dir``."""
    path = Path(markdown)
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no generated block; add the two lines\n{BEGIN}\n{END}")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    new = head + build_report(load_results(results_dir)) + tail
    path.write_text(new)
    return new


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for exp in EXPERIMENTS:
        p = sub.add_parser(exp, help=f"train one {exp} row")
        p.add_argument("--model", required=True, choices=MODELS)
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--variant", default="", choices=["", *VARIANTS], help="an ablation (see VARIANTS)")
        p.add_argument("--data-root", default="", help="default: ../shared/data/... next to the repository")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (recorded)")
        p.add_argument(
            "--runs",
            default=str(Path(tempfile.gettempdir()) / "fastmtl-experiments"),
            help="run folders (outside the repository; default: fastmtl-experiments in the temp folder)",
        )
        p.add_argument("--results", default=str(REPO / "experiments" / "results"))
        p.add_argument("--figures", default=str(REPO / "docs" / "figures"))
        p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
        p.add_argument("--no-roc", action="store_true", help="skip the validation ROC figure")
        p.add_argument("--time-limit", type=float, default=None, metavar="MIN",
                       help="train at most MIN minutes per command, then save; the same command resumes "
                       f"(default {EXPERIMENTS[exp].get('time_limit', 0.0):g}; 0 = no limit)")  # fmt: skip
        if exp == "isic-paper":
            _paper_arguments(p)
        p.set_defaults(exp=exp)
    p = sub.add_parser("report", help="rebuild the tables in docs/RESULTS.md from the result JSONs")
    p.add_argument("--results", default=str(REPO / "experiments" / "results"))
    p.add_argument("--markdown", default=str(REPO / "docs" / "RESULTS.md"))
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command == "report":
        write_report(args.results, args.markdown)
        print(f"rebuilt {args.markdown}")
    elif getattr(args, "budget_min", None) is not None or getattr(args, "out", None):
        args.budget_min = args.budget_min or 0.0
        try:
            run_paper(args)
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(f"run.py: error: {e}") from e
    else:
        run_experiment(args)


def _paper_arguments(p: argparse.ArgumentParser) -> None:
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


if __name__ == "__main__":
    main()
