"""``fastmtl demo``: train briefly, evaluate, predict on a few held-out images and say where everything is.

Without a data folder it uses the embedded synthetic lesions (the ``demo`` preset: a few minutes on a 2-core
CPU) and says so in a banner; with one, the kind is detected and the same short protocol runs on it. A finished
demo keeps only what a user needs: the resumable training state (``last.*``, with the optimizer) is deleted
once the demo has finished, so an interrupted demo still continues with ``resume=True``.

A checkpoint trained on synthetic lesions is recognised from its metadata (``data_kind``, else the stored
training config's ``data``; see :mod:`fastmtl.checkpoint.meta`), and ``predict`` and ``eval`` say so.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastmtl.checkpoint.meta import IN_DEMO
from fastmtl.checkpoint.rundir import RunDir
from fastmtl.files import atomic_write_bytes

if TYPE_CHECKING:
    from fastmtl.engine.train.config import TrainConfig

__all__ = ["demo_config", "disk_usage", "eval_command", "run_demo"]

N_PREDICT = 6


def disk_usage(folder: str | Path) -> int:
    """Bytes in the regular files under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file() and not p.is_symlink())


def _banner(config: TrainConfig, data_root: str | Path | None, out: Path) -> None:
    if config.data.kind == "synthetic":
        print(
            "fastmtl demo: training on SYNTHETIC lesions (generated shapes with classes synthetic_irregular / "
            "_speckled / _regular), not on real images.\n"
            "  The model learns nothing about real lesions: its predictions on real images mean nothing.\n"
            "  Run `fastmtl demo --data-root DIR` to use an ISIC / OCT / image folder instead.\n"
            f"  Output: {out}/ (135 MB with the demo's model; its resumable training state is deleted when done)."
        )
    else:
        print(f"fastmtl demo: training briefly on {config.data.kind} data from {data_root}; output in {out}/")


def demo_config(data_root: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """The ``demo`` preset; with a data folder the kind is detected instead of using synthetic data."""
    from fastmtl.engine.train.config_file import load_config

    config = load_config("demo", overrides)
    if data_root is not None and config.data.kind == "synthetic":
        own = any(k.split("=", 1)[0].startswith(("data_options", "data.options")) for k in overrides)
        config = config.replace(data="auto", data_options=config.data.options if own else {})
    return config


def _write_inputs(config: TrainConfig, data_root: str | Path | None, folder: Path) -> list[Path]:
    """Saves the first few validation images as PNGs (what a user would feed to ``predict``)."""
    from PIL import Image

    from fastmtl.data.transforms import denormalize
    from fastmtl.engine.train.loaders import build_run_data

    data = build_run_data(config, data_root)
    paths = []
    for i in range(min(N_PREDICT, len(data.val))):
        sample = data.val[i]
        pixels = denormalize(sample["image"], config.data.normalize).expand(3, -1, -1).permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        path = folder / f"{i:02d}_{sample['id'].replace('/', '_')}.png"
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def _evaluate(checkpoint: Path, config: TrainConfig, data_root, out_dir: Path, device: str) -> dict[str, Any] | None:
    """Evaluates on the test split (a fresh synthetic one without data: its default 64 images); None when the data
    has no test split. The same images as ``fastmtl eval --checkpoint <best> [--data-root DIR] --out DIR``
    evaluates, so that command reproduces the demo's numbers (:func:`eval_command`)."""
    from fastmtl.engine.evaluate.job import evaluate

    kind = "synthetic" if data_root is None and config.data.kind in ("synthetic", "auto") else None
    opts = {} if kind == "synthetic" else {**config.data.options}
    if config.data.cache_dir:
        opts["cache_dir"] = False if config.data.cache_dir == "off" else config.data.cache_dir
    try:
        return evaluate(checkpoint, data_root, "test", out_dir, kind=kind, batch_size=config.optim.batch_size,
                        num_workers=0, device=device, dataset_opts=opts)  # fmt: skip
    except FileNotFoundError as e:
        print(f"demo: no test split to evaluate on ({e}); the validation metrics are in log.csv")
        return None


def eval_command(checkpoint: str | Path, data_root: str | Path | None, out: str | Path) -> str:
    """The ``fastmtl eval`` command line that evaluates the demo's checkpoint on the demo's test images again."""
    where = "" if data_root is None else f" --data-root {data_root}"
    return f"fastmtl eval --checkpoint {checkpoint}{where} --out {out}"


def run_demo(
    data_root: str | Path | None = None,
    out_dir: str | Path = "fastmtl-demo",
    *,
    device: str = "auto",
    overrides: Sequence[str] = (),
    resume: bool = False,
    keep_training_state: bool = False,
) -> dict[str, Any]:
    """Runs the demo and returns the paths of what it wrote plus the training and evaluation results.

    Args:
        data_root: a dataset folder, or None for the embedded synthetic data.
        out_dir: receives ``train/`` (checkpoints, logs, curves.png), ``eval/`` (metrics.json, plots),
            ``inputs/`` (the images predicted on) and ``predictions/`` (masks, probabilities.csv, overlays).
        device: "auto", "cpu" or "cuda".
        overrides: ``key=value`` changes to the demo preset.
        resume: continue an interrupted demo run in ``out_dir/train``.
        keep_training_state: keep ``train/last.*`` (weights + optimizer + RNG state, about three times the size
            of ``best.safetensors``) after the demo finishes; by default it is deleted then (not when training
            stopped at ``time_limit_min``, which ``resume`` continues).

    Returns:
        ``train``, ``eval``, ``predict`` (the three steps' results), ``paths``, ``synthetic`` (trained on
        synthetic lesions), ``disk_bytes`` (what ``out_dir`` holds at the end) and ``seconds`` (wall time).
    """
    from fastmtl.engine.predict.job import predict
    from fastmtl.engine.train.job import train
    from fastmtl.runtime import resolve_device

    start = time.perf_counter()
    out = Path(out_dir)
    config = demo_config(data_root, [*overrides, f"device={device}"])
    _banner(config, data_root, out)
    run_dir = RunDir(out / "train")
    result = train(config, data_root, run_dir.path, resume=resume)
    best = Path(result["best_checkpoint"])
    eval_device = str(resolve_device(config.run.device))
    report = summary = None
    if result["stopped_early"]:  # time_limit_min: keep last.* and stop here; resume=True carries on
        print(f"demo: training stopped at its time limit after {result['global_step']} steps; run the same command "
              "with --resume to finish it")  # fmt: skip
    else:
        token = IN_DEMO.set(True)
        try:
            report = _evaluate(best, config, data_root, out / "eval", eval_device)
            inputs = _write_inputs(config, data_root, out / "inputs")
            summary = predict(best, [str(p) for p in inputs], out / "predictions", batch_size=config.optim.batch_size,
                              num_workers=0, device=eval_device, overlays=True)  # fmt: skip
        finally:
            IN_DEMO.reset(token)
    if not keep_training_state and not result["stopped_early"]:  # done: nothing left to resume
        for path in run_dir.training_state():  # weights + optimizer + RNG (and a cut-off save's); best stays
            path.unlink(missing_ok=True)
    return {
        "train": result,
        "eval": report,
        "predict": summary,
        "synthetic": config.data.kind == "synthetic",
        "disk_bytes": disk_usage(out),
        "seconds": time.perf_counter() - start,
        "paths": {
            "checkpoint": str(best),
            "curves": str(run_dir.curves),
            "log": str(run_dir.log_csv),
            "report": None if report is None else str(out / "eval" / "metrics.json"),
            "eval_again": None if report is None else eval_command(best, data_root, out / "eval-again"),
            "predictions": None if summary is None else str(out / "predictions"),
        },
    }
