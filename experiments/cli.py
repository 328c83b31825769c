"""Reproducible accuracy experiments: one command per table row, and a report builder for docs/RESULTS.md.
``python -m experiments ...`` is the same command line; the result JSONs record the ``experiments/run.py`` form.

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
import shlex
import sys
import tempfile
import time
from pathlib import Path

from experiments.paper import add_paper_arguments, run_paper
from experiments.report import write_report
from experiments.row import run_experiment
from experiments.table import EXPERIMENTS, MODELS, REPO, VARIANTS

__all__ = ["build_parser", "main"]

# --budget-min counts from here: torch's import (none above: the modules import it when they run) and the data's
# decoding are inside it
STARTED = time.monotonic()


def build_parser(prog: str = "python experiments/run.py") -> argparse.ArgumentParser:
    """The command line: a subcommand per experiment (one table row) and ``report``."""
    parser = argparse.ArgumentParser(prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
            add_paper_arguments(p)
        p.set_defaults(exp=exp)
    p = sub.add_parser("report", help="rebuild the tables in docs/RESULTS.md from the result JSONs")
    p.add_argument("--results", default=str(REPO / "experiments" / "results"))
    p.add_argument("--markdown", default=str(REPO / "docs" / "RESULTS.md"))
    return parser


def main(argv: list[str] | None = None, prog: str = "python experiments/run.py") -> None:
    """Runs one command (``argv``, default the process's arguments); ``prog`` names it in help and errors."""
    args = build_parser(prog).parse_args(argv)
    # a command counts its budget from its start; a call (tests) from now. The recorded command is the documented
    # one, however it was invoked (`python -m experiments` runs the same command line).
    args.started = STARTED if argv is None else None
    args.command_line = shlex.join(["python", "experiments/run.py", *(sys.argv[1:] if argv is None else argv)])
    if args.command == "report":
        write_report(args.results, args.markdown)
        print(f"rebuilt {args.markdown}")
    elif getattr(args, "budget_min", None) is not None or getattr(args, "out", None):
        args.budget_min = args.budget_min or 0.0
        try:
            run_paper(args)
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(f"{prog}: error: {e}") from e
    else:
        run_experiment(args)
