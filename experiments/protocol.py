"""A training protocol in one command under a wall-clock budget, evaluated on the device, with a compact record.

:func:`run_protocol` trains with :func:`fastmtl.engine.train.job.train` on the fast path (device-resident input,
the device step, ``torch.compile`` + CUDA graphs on CUDA), stops cleanly when the budget (minus a reserve for
the evaluation) is spent, evaluates the selected model on the validation split and on any further data
folders, and writes a bring-back folder of a few small files:

    OUT/summary.json        what ran, how far it got, throughput, projection, layer paths, final metrics
    OUT/metrics.json        the SPEC section 6 metrics of the selected model on the validation split
    OUT/eval-<name>.json    the same on each further folder (one file per ``evals`` entry)
    OUT/log.csv             one row per epoch (losses, validation metrics, throughput)
    OUT/curves.png          learning curves

summary.json, metrics.json and log.csv are written after every validation too (``status`` "running: ..."), so
that a command killed at its time limit still brings back what it reached. Under a budget the default schedule
is "budget" (:class:`~fastmtl.engine.train.schedule.BudgetSchedule`): the first steps are timed, the number of steps
that fit the budget (validations and the final evaluation's reserve included) is set, and the poly schedule runs
to its end over them; ``schedule`` in summary.json records the plan against the paper's 150 epochs.

The weights stay in the scratch run folder (``run_dir``), never in OUT. The evaluation targets live in
:mod:`experiments.evaluation`, the throughput and projection helpers in :mod:`experiments.projection`.
"""

from __future__ import annotations

import math
import platform
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from experiments.evaluation import HEADLINE, EvalTarget, evaluate, open_eval, selected_model
from experiments.projection import PAPER_EPOCHS, throughput, train_flops_per_image
from fastmtl.checkpoint.rundir import RunDir
from fastmtl.engine.train.config import TrainConfig
from fastmtl.engine.train.device_loader import decode_split
from fastmtl.engine.train.device_step import layer_paths
from fastmtl.files import atomic_write_bytes, atomic_write_json, json_safe
from fastmtl.runtime import amp_dtype

__all__ = ["run_protocol"]


def run_protocol(
    config: TrainConfig,
    data_root: str | Path | None,
    out_dir: str | Path,
    run_dir: str | Path,
    *,
    budget_min: float = 0.0,
    reserve_s: float = 45.0,
    evals: tuple[EvalTarget, ...] = (),
    limit_images: int = 0,
    extra: dict[str, Any] | None = None,
    log=print,
    schedule: str = "budget",
    started: float | None = None,
) -> dict[str, Any]:
    """Trains ``config`` into ``run_dir`` within ``budget_min`` minutes (0 = no budget) and writes OUT.

    Args:
        config: the run's config (the fast path's settings are the caller's choice).
        data_root: the training data folder.
        out_dir: the bring-back folder (summary.json, metrics.json, eval-<name>.json, log.csv, curves.png).
        run_dir: scratch folder for checkpoints (weights stay there); must not hold a run.
        budget_min: wall-clock budget of the whole call; training stops ``reserve_s`` before it.
        reserve_s: seconds kept for loading the selected model, the evaluations and writing OUT.
        evals: further folders to evaluate the selected model on.
        limit_images: evaluate at most this many images of each further folder (0 = all); for dry runs.
        extra: facts to add to summary.json (the command line, the versions).
        log: where progress lines go.
        schedule: "budget" (with a budget: the poly schedule fitted to the steps that fit it, see
            :class:`~fastmtl.engine.train.schedule.BudgetSchedule`) or "epochs" (the configured epochs; the budget may
            stop the run with the schedule barely decayed).
        started: the ``time.monotonic()`` the budget counts from (default: now); a command passes its own start,
            so that its imports are inside the budget.

    Returns:
        The summary written to ``OUT/summary.json``.
    """
    from fastmtl.checkpoint.store import read_checkpoint_info
    from fastmtl.engine.train.job import train

    if schedule not in ("budget", "epochs"):
        raise ValueError(f"schedule must be 'budget' or 'epochs', got {schedule!r}")
    started = time.monotonic() if started is None else started
    out_dir, run_dir = Path(out_dir), RunDir(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = started + 60.0 * budget_min - reserve_s if budget_min else None
    opened = {t.name: (t, open_eval(config, t, limit_images)) for t in evals}
    pool = ThreadPoolExecutor(max_workers=1)  # decodes the evaluation splits while the device trains
    pending = {name: (t, pool.submit(decode_split, ds, "cpu", 2)) for name, (t, ds) in opened.items()}
    flops = train_flops_per_image(config)
    budgeted = schedule == "budget" and deadline is not None
    facts = {"config": config, "flops": flops, "budget_min": budget_min, "started": started, "run_dir": run_dir}

    def progress(so_far: dict[str, Any]) -> None:  # after every epoch: what a kill of the command would lose
        if so_far["history"] and "validation_s" in so_far["history"][-1]:
            record = {"status": f"running: epoch {so_far['epochs_completed']} validated", **_record(so_far, facts)}
            _write_metrics(out_dir, so_far, _read_json(run_dir.split), "best")
            if run_dir.log_csv.is_file():
                atomic_write_bytes(out_dir / run_dir.log_csv.name, run_dir.log_csv.read_bytes())
            atomic_write_json(out_dir / "summary.json", json_safe({**record, **(extra or {})}))  # last: says how far

    result = train(config, data_root, run_dir.path, deadline=deadline, budget_schedule=budgeted, warm_validation=True,
                   on_epoch=progress)  # fmt: skip
    trained = time.monotonic()
    device = torch.device("cuda" if torch.cuda.is_available() and config.run.device != "cpu" else "cpu")
    model, which = selected_model(run_dir, device)
    _, meta = read_checkpoint_info(run_dir.selected()[0])
    split = _read_json(run_dir.split)
    val = _write_metrics(out_dir, result, split, which)
    files = {"summary": "summary.json", "metrics": "metrics.json"}
    evaluated: dict[str, Any] = {}
    for name, (target, future) in pending.items():
        try:
            eval_split = future.result()
            metrics = evaluate(model, eval_split, config, device, meta)
        except Exception as e:  # noqa: BLE001 - one bad folder must not lose the run's other results
            log(f"evaluation of {target.root}:{target.split} failed: {type(e).__name__}: {e}")
            evaluated[name] = {"error": f"{type(e).__name__}: {e}"}
            continue
        atomic_write_json(out_dir / f"eval-{name}.json", json_safe({
            "split": target.split, "data_root": str(target.root), "model": which, "epoch": result["best_epoch"],
            "n_images": len(eval_split), "metrics": metrics,
        }))  # fmt: skip
        evaluated[name] = {"file": f"eval-{name}.json", **{k: metrics.get(k) for k in HEADLINE if k in metrics}}
        files[f"eval-{name}"] = f"eval-{name}.json"
    pool.shutdown()
    for path in (run_dir.log_csv, run_dir.curves):
        if path.is_file():
            shutil.copyfile(path, out_dir / path.name)
            files[path.stem] = path.name
    history = result["history"]
    summary = {
        "status": "done",
        **_record(result, facts),
        "setup_and_train_s": trained - started,
        "layer_paths": layer_paths(model, device, result["step"], amp_dtype(config.run.amp, device)),
        "selected": which,
        "selected_epoch": result["best_epoch"],
        "metrics": {k: val.get(k) for k in HEADLINE if k in val},
        "last_epoch_metrics": {k[4:]: history[-1].get(k) for k in (f"val_{h}" for h in HEADLINE) if history
                               and k in history[-1]},
        "eval": evaluated,
        "files": files,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "compile_counters": _compile_counters(),
        "config": config.to_dict(),
        **(extra or {}),
    }  # fmt: skip
    summary["wall_s"] = time.monotonic() - started
    atomic_write_json(out_dir / "summary.json", json_safe(summary))
    _report(summary, log)
    return summary


def _compile_counters() -> dict[str, int]:
    """Graph breaks (parts of the compiled step run eagerly) and CUDA graphs Inductor skipped, in this process."""
    from torch._dynamo.utils import counters

    return {"graph_breaks": sum(counters["graph_break"].values()),
            "cudagraph_skips": int(counters["inductor"].get("cudagraph_skips", 0))}  # fmt: skip


def _write_metrics(out_dir: Path, result: dict[str, Any], split: dict[str, Any], which: str) -> dict[str, Any]:
    """OUT/metrics.json: the validation metrics of the selected epoch (best validation JI) so far; returns them."""
    selected = next((r for r in result["history"] if r["epoch"] == result["best_epoch"]), None)
    val = {k[4:]: v for k, v in selected.items() if k.startswith("val_")} if selected else {}
    atomic_write_json(out_dir / "metrics.json", json_safe({
        "split": f"validation ({split.get('val_source', '?')})", "model": which, "epoch": result["best_epoch"],
        "n_images": len(split.get("val_ids", [])), "metrics": val,
    }))  # fmt: skip
    return val


def _record(result: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    """How far the run got, its throughput, schedule and projection: the part of summary.json known after any
    epoch (written after every validation, then once more at the end)."""
    config, flops, history = facts["config"], facts["flops"], result["history"]
    split = _read_json(facts["run_dir"].split)
    full_images = split.get("full_train_size", len(split.get("train_ids", [])))
    costs = throughput(history, config.optim.batch_size, full_images, config.run.val_every_epochs,
                       result.get("partial_epoch"))  # fmt: skip
    steady = costs["train_images_per_s"] or math.nan
    schedule = result.get("schedule")
    plan = {"schedule": "epochs", "planned_steps": None} if schedule is None else schedule.record(
        PAPER_EPOCHS, costs.get("images_per_full_epoch") or 0, config.optim.batch_size)  # fmt: skip
    done = result["epochs_completed"]
    return {
        "epochs_done": done,
        "epochs_planned": config.optim.epochs,
        "epochs_done_of_paper": f"{done} of {PAPER_EPOCHS}"
        + (f" (+{result['partial_epoch']['steps']} steps)" if result.get("partial_epoch") else ""),
        "steps_done": result["global_step"],
        "stopped_by_budget": bool(result["stopped_early"]),
        "budget_min": facts["budget_min"],
        "wall_s": time.monotonic() - facts["started"],
        "train_s": sum(r["time_s"] for r in history),
        **costs,
        "schedule": plan,
        "final_lr": history[-1]["lr"] if history else None,
        "partial_epoch": result.get("partial_epoch") or {},
        "train_gflops_per_image": flops / 1e9,
        "achieved_tflops": steady * flops / 1e12 if steady > 0 else None,
        # what 150 full epochs in 9 minutes of training would need (the target), for comparison
        "tflops_needed_for_150_epochs_in_9_min": PAPER_EPOCHS * costs["images_per_full_epoch"] * flops / 540 / 1e12
        if costs.get("images_per_full_epoch") else None,
        "run_dir": str(facts["run_dir"].path),
    }  # fmt: skip


def _read_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text()) if path.is_file() else {}


def _report(summary: dict[str, Any], log) -> None:
    done, planned = summary["epochs_done"], summary["epochs_planned"]
    status = "stopped at the budget" if summary["stopped_by_budget"] else "completed"
    rate = summary["train_images_per_s"]
    log(f"{status}: {done}/{planned} epochs ({summary['steps_done']} steps) in {summary['wall_s']:.1f} s")
    if rate and rate == rate:
        log(f"sustained {rate:.2f} training images/s = {summary['epochs_per_s'] or 0:.4f} epochs/s "
            f"({summary['achieved_tflops'] or 0:.3f} TFLOP/s at {summary['train_gflops_per_image']:.1f} GFLOP/image "
            f"forward + backward); {PAPER_EPOCHS} epochs would take {summary['projected_150_epochs_min']:.1f} min "
            "on this device")  # fmt: skip
    metrics = summary["metrics"]
    if metrics:
        log("selected model (" + summary["selected"] + "): " + ", ".join(
            f"{k} {v:.2f}" for k, v in metrics.items() if isinstance(v, float)))  # fmt: skip
