"""``fastmtl demo``: train briefly, evaluate, predict on a few held-out images and say where everything is.

Without a data folder it uses the embedded synthetic lesions (the ``demo`` preset: a minute or two on a
2-core CPU); with one, the kind is detected and the same short protocol runs on it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from fastmtl.data.transforms import denormalize
from fastmtl.engine.loaders import build_run_data
from fastmtl.engine.train import train
from fastmtl.engine.train_config import TrainConfig, load_config
from fastmtl.files import atomic_write_bytes
from fastmtl.runtime import resolve_device

__all__ = ["demo_config", "run_demo"]

N_PREDICT = 6


def demo_config(data_root: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """The ``demo`` preset; with a data folder the kind is detected instead of using synthetic data."""
    config = load_config("demo", overrides)
    if data_root is not None and config.data == "synthetic":
        extra = {k.split("=", 1)[0] for k in overrides}
        config = config.replace(data="auto", data_options={} if "data_options" not in extra else config.data_options)
    return config


def _write_inputs(config: TrainConfig, data_root: str | Path | None, folder: Path) -> list[Path]:
    """Saves the first few validation images as PNGs (what a user would feed to ``predict``)."""
    data = build_run_data(config, data_root)
    paths = []
    for i in range(min(N_PREDICT, len(data.val))):
        sample = data.val[i]
        pixels = denormalize(sample["image"], config.normalize).expand(3, -1, -1).permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        path = folder / f"{i:02d}_{sample['id'].replace('/', '_')}.png"
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def _evaluate(checkpoint: Path, config: TrainConfig, data_root, out_dir: Path, device: str) -> dict[str, Any] | None:
    """Evaluates on the test split (a fresh synthetic one without data); None when the data has no test split."""
    from fastmtl.engine.evaluate import evaluate

    kind = "synthetic" if data_root is None and config.data in ("synthetic", "auto") else None
    opts = {"n": 32} if kind == "synthetic" else {**config.data_options}
    if config.cache_dir:
        opts["cache_dir"] = False if config.cache_dir == "off" else config.cache_dir
    try:
        return evaluate(checkpoint, data_root, "test", out_dir, kind=kind, batch_size=config.batch_size,
                        num_workers=0, device=device, dataset_opts=opts)  # fmt: skip
    except FileNotFoundError as e:
        print(f"demo: no test split to evaluate on ({e}); the validation metrics are in log.csv")
        return None


def run_demo(
    data_root: str | Path | None = None,
    out_dir: str | Path = "fastmtl-demo",
    *,
    device: str = "auto",
    overrides: Sequence[str] = (),
    resume: bool = False,
) -> dict[str, Any]:
    """Runs the demo and returns the paths of what it wrote plus the training and evaluation results.

    Args:
        data_root: a dataset folder, or None for the embedded synthetic data.
        out_dir: receives ``train/`` (checkpoints, logs, curves.png), ``eval/`` (metrics.json, plots),
            ``inputs/`` (the images predicted on) and ``predictions/`` (masks, probabilities.csv, overlays).
        device: "auto", "cpu" or "cuda".
        overrides: ``key=value`` changes to the demo preset.
        resume: continue an interrupted demo run in ``out_dir/train``.
    """
    from fastmtl.engine.predict import predict

    out = Path(out_dir)
    config = demo_config(data_root, [*overrides, f"device={device}"])
    result = train(config, data_root, out / "train", resume=resume)
    best = Path(result["best_checkpoint"])
    eval_device = str(resolve_device(config.device))
    report = _evaluate(best, config, data_root, out / "eval", eval_device)
    inputs = _write_inputs(config, data_root, out / "inputs")
    summary = predict(best, [str(p) for p in inputs], out / "predictions", batch_size=config.batch_size,
                      num_workers=0, device=eval_device, overlays=True)  # fmt: skip
    return {
        "train": result,
        "eval": report,
        "predict": summary,
        "paths": {
            "checkpoint": str(best),
            "curves": str(out / "train" / "curves.png"),
            "log": str(out / "train" / "log.csv"),
            "report": None if report is None else str(out / "eval" / "metrics.json"),
            "predictions": str(out / "predictions"),
        },
    }
