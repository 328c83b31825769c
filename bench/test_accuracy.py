"""Accuracy next to wall time: a checkpoint's paper metrics on a dataset, and a short fixed-budget training run.

- ``test_evaluate_checkpoint``: :func:`fastmtl.engine.evaluate.job.evaluate` on ``--bench-checkpoint`` /
  ``--bench-data`` / ``--bench-split`` (env ``FASTMTL_BENCH_CHECKPOINT`` / ``_DATA`` / ``_SPLIT``).
- ``test_train_budget``: :func:`fastmtl.engine.train.job.train` of ``resformer_mtl`` on ``../shared/data/isic2017``
  (validation carved from the training split, no pretrained trunk) with a fixed step budget per device, reporting
  the validation DSC / JI / AUC next to the run's wall time. The budget on a 2-core CPU (a few steps at 64 px)
  only proves the pipeline; the GPU budget (2 epochs at 224 px) gives numbers worth comparing between commits.

Each run is timed once by the shared ``measure`` fixture (``once=True``): the runs are long and stateful.
Skipped with the reason when the data, the checkpoint or the engine is missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from fastmtl.engine.train.config import config_from_dict
from fastmtl.files import json_safe

ISIC_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isic2017"
METRICS = ("dsc", "ji", "global_dice", "auc_mean", "auc_melanoma", "auc_seborrheic_keratosis", "acc", "sen", "spe")


def _budget(device: torch.device, quick: bool) -> dict[str, Any]:
    """TrainConfig fields of the fixed budget: per device, or the smoke budget of --bench-quick."""
    if quick:
        return dict(img_size=32, epochs=1, batch_size=4, max_steps_per_epoch=2, max_val_steps=1)
    if device.type == "cuda":
        return dict(img_size=224, epochs=2, batch_size=8, max_steps_per_epoch=0, max_val_steps=0, num_workers=4)
    # ~16 s per step of 8 images at 64 px on 2 busy cores: 4 steps + 16 validation images is ~1.5 minutes.
    return dict(img_size=64, epochs=1, batch_size=8, max_steps_per_epoch=4, max_val_steps=2)


def test_train_budget(benchmark, measure, bench_device, bench_quick, tmp_path) -> None:
    engine = pytest.importorskip("fastmtl.engine.train.job", reason="fastmtl.engine.train.job is not available")
    if not ISIC_DATA.is_dir():
        pytest.skip(f"ISIC 2017 data not found at {ISIC_DATA} (the repository's ../shared/data/isic2017)")
    budget = {"num_workers": 0, **_budget(bench_device, bench_quick)}
    config = config_from_dict({"model": "resformer_mtl", "data": "isic2017", "val_source": "carve", "progress": False,
                               "cache_dir": "off", "device": bench_device.type, **budget})  # fmt: skip
    out_dir = tmp_path / "run"
    try:
        run = lambda: engine.train(config, ISIC_DATA, out_dir)  # noqa: E731
        summary = measure(run, group="accuracy-train-isic2017", provider="resformer_mtl", once=True)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)  # checkpoints with optimizer state: ~1 GB per run
    metrics = summary["metrics"]
    steps = summary["global_step"]
    benchmark.extra_info.update(
        steps=steps,
        images_seen=steps * config.optim.batch_size,
        val_images=metrics.get("n_seg_images"),
        **{k: v for k, v in budget.items() if k != "num_workers"},
        **{k: json_safe(metrics.get(k)) for k in METRICS},
    )


def test_evaluate_checkpoint(benchmark, measure, pytestconfig, bench_device, tmp_path) -> None:
    checkpoint, data = pytestconfig.getoption("bench_checkpoint"), pytestconfig.getoption("bench_data")
    if not checkpoint:
        pytest.skip("no checkpoint: pass --bench-checkpoint PATH (or FASTMTL_BENCH_CHECKPOINT)")
    if not data:
        pytest.skip("no dataset: pass --bench-data DIR (or FASTMTL_BENCH_DATA)")
    if not Path(checkpoint).is_file():
        pytest.skip(f"checkpoint {checkpoint} does not exist")
    if not Path(data).exists():
        pytest.skip(f"dataset folder {data} does not exist")
    engine = pytest.importorskip("fastmtl.engine.evaluate.job", reason="fastmtl.engine.evaluate.job is not available")
    split = pytestconfig.getoption("bench_split")

    def run() -> dict[str, Any]:
        return engine.evaluate(checkpoint, data, split, tmp_path / "eval", device=bench_device, worst_k=0,
                               num_workers=0 if bench_device.type == "cpu" else 4)  # fmt: skip

    report = measure(run, group="accuracy-eval", provider="checkpoint", once=True)
    metrics = report["metrics"]
    n_images = metrics.get("n_images") or 0
    seconds = benchmark.extra_info["wall_s"]
    benchmark.extra_info.update(
        model=report["model"],
        checkpoint=str(checkpoint),
        split=split,
        img_size=report["img_size"],
        n_images=n_images,
        eval_images_per_s=n_images / seconds if seconds else None,
        **{k: json_safe(metrics.get(k)) for k in METRICS},
    )
