"""Training runs end to end on tiny synthetic configs: outputs, schedule, class weights, errors, real ISIC data.

Most runs use ``tiny_mtl_test``, a registered few-hundred-parameter model (conv + BN + dropout, both heads),
so the engine is exercised in seconds; the resume test also runs a real registered model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from fastmtl.checkpoint.store import CheckpointError, load_model
from fastmtl.config import ModelConfig
from fastmtl.data import SyntheticLesions
from fastmtl.engine.train.config import TrainConfig, config_from_dict
from fastmtl.engine.train.config_file import load_config
from fastmtl.engine.train.job import train
from fastmtl.engine.train.loop import NonFiniteLossError
from fastmtl.engine.train.schedule import poly_lr
from fastmtl.models.base import MTLModel
from fastmtl.output import MTLOutput
from fastmtl.registry import register_model

ISIC_REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "isic2017"


class TinyMTL(MTLModel):
    """Conv-BN-ReLU-dropout trunk with a 1x1 seg head and a linear class head; dropout draws from the global RNG."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.body = nn.Sequential(
            nn.Conv2d(config.in_chans, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.2)
        )
        self.seg = nn.Conv2d(8, config.seg_classes, 1)
        self.cls = nn.Linear(8, config.cls_classes)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.body(x)]  # (B, 8, H, W)

    def forward_head(self, feats: list[torch.Tensor]) -> MTLOutput:
        return MTLOutput(self.seg(feats[-1]), self.cls(feats[-1].mean(dim=(2, 3))))


@register_model(("img_size", "in_chans", "seg_classes", "cls_classes"))
def tiny_mtl_test(**kwargs) -> TinyMTL:
    """Test-only model: builds in microseconds, trains in milliseconds."""
    return TinyMTL(ModelConfig(name="tiny_mtl_test", dfe="none", drop_path_rate=0.0, **kwargs))


def tiny_config(**changes) -> TrainConfig:
    """Synthetic data (16 train / 8 val images at 32 px), the tiny model, CPU, deterministic, no progress bar."""
    base = {
        "model": "tiny_mtl_test",
        "data": "synthetic",
        "data_options": {"n": 16},
        "img_size": 32,
        "epochs": 2,
        "batch_size": 4,
        "lr": 1e-2,
        "num_workers": 0,
        "device": "cpu",
        "deterministic": True,
        "progress": False,
    }
    return config_from_dict({**base, **changes})


def test_train_writes_checkpoints_logs_curves_and_config(tmp_path):
    config = tiny_config(max_steps_per_epoch=3)
    result = train(config, None, tmp_path)

    assert result["epochs_completed"] == 2 and result["global_step"] == 6 and not result["stopped_early"]
    for name in ("best.safetensors", "last.safetensors", "last.train.safetensors", "last.json", "log.csv"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "train_seg", "train_cls", "val_loss", "val_ji", "val_dsc", "val_auc_mean", "lr"} <= set(
        rows[0]
    )
    assert rows[0]["selection_metric"] == "val_ji"
    assert (tmp_path / "log.csv").read_text().splitlines()[0].startswith("epoch,")
    assert load_config(tmp_path / "config.toml") == config
    assert json.loads((tmp_path / "config.json").read_text())["model"]["name"] == "tiny_mtl_test"

    model, meta = load_model(tmp_path / "best.safetensors")
    # by name: other test modules import this one as tests.engine.test_train, a second copy of the class
    assert type(model).__name__ == "TinyMTL" and model.config.img_size == 32
    assert meta["epoch"] == result["best_epoch"] and meta["class_names"] == list(SyntheticLesions.class_names)
    assert meta["seg_class_names"] == ["lesion"]
    assert meta["normalize"] == "imagenet" and meta["val_source"] == "dataset"
    assert result["best_value"] == max(r["val_ji"] for r in rows)


def test_poly_schedule_values_and_logged_lr(tmp_path):
    assert poly_lr(1.0, 0, 10) == 1.0
    assert poly_lr(2.0, 5, 10, 0.9) == pytest.approx(2.0 * 0.5**0.9)
    assert poly_lr(1.0, 10, 10) == 0.0
    result = train(tiny_config(max_steps_per_epoch=2), None, tmp_path)
    # the lr logged for an epoch is that of its last iteration: iterations 1 and 3 of 4
    logged = [row["lr"] for row in result["history"]]
    assert logged == pytest.approx([1e-2 * (1 - 1 / 4) ** 0.9, 1e-2 * (1 - 3 / 4) ** 0.9])


def test_class_weights_come_from_the_training_labels(tmp_path):
    from fastmtl.data import build_dataset
    from fastmtl.losses import class_weights_from_labels

    train(tiny_config(epochs=1, max_steps_per_epoch=1), None, tmp_path)
    _, meta = load_model(tmp_path / "best.safetensors")
    labels = build_dataset("synthetic", None, "train", img_size=32, train=False, n=16).labels
    assert meta["class_weights"] == pytest.approx(class_weights_from_labels(torch.as_tensor(labels)).tolist())


def test_carved_validation_split_is_held_out_of_training(tmp_path):
    from fastmtl.engine.train.loaders import build_run_data

    config = tiny_config(val_source="carve", val_fraction=0.25)
    data = build_run_data(config, None)
    assert data.val_source == "carve" and len(data.val) == 4 and len(data.train) == 12
    assert not set(data.val.ids) & set(data.train.ids)
    with pytest.raises(ValueError, match="no validation split"):
        build_run_data(tiny_config(val_source="dataset", data="folder"), tmp_path / "nothing")


def test_split_seed_fixes_the_carved_split_across_run_seeds(tmp_path):
    from fastmtl.engine.train.loaders import build_run_data

    def val_ids(**changes):
        return build_run_data(tiny_config(val_source="carve", val_fraction=0.25, **changes), None).val.ids

    assert val_ids(seed=1) == val_ids(seed=2)  # the run seed leaves the held-out cases alone
    assert val_ids(split_seed=1) != val_ids(split_seed=2)
    train(tiny_config(val_source="carve", val_fraction=0.25, epochs=1, max_steps_per_epoch=1), None, tmp_path)
    record = json.loads((tmp_path / "split.json").read_text())
    assert record["split_seed"] == 1234 and record["val_fraction"] == 0.25
    assert record["val_ids"] == list(val_ids()) and len(record["train_ids"]) == 12


def test_two_class_fluid_head_trains_with_named_metrics(tmp_path, manifest_root):
    options = {"subset": "duke", "task": "fluid-2class", "fractions": [2, 1, 1]}
    result = train(tiny_config(data="oct", data_options=options, batch_size=2), manifest_root, tmp_path / "run")
    assert {"val_dsc_fluid", "val_ji_fluid", "val_auc_fluid"} <= set(result["history"][-1])
    model, meta = load_model(tmp_path / "run" / "best.safetensors")
    assert model.config.seg_classes == 2 and meta["seg_class_names"] == ["fluid"]


def test_non_finite_loss_stops_with_step_and_components(tmp_path, monkeypatch):
    from fastmtl.losses import MTLLoss

    real_forward = MTLLoss.forward

    def poisoned(self, output, *args, **kwargs):
        terms = real_forward(self, output, *args, **kwargs)
        return {**terms, "cls": terms["cls"] * math.nan, "loss": terms["loss"] * math.nan}

    monkeypatch.setattr(MTLLoss, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1 step 1 \(global step 1\).*loss=nan.*seg=.*cls=nan"):
        train(tiny_config(), None, tmp_path)


def test_huge_learning_rate_diverges_with_a_clear_error(tmp_path):
    with pytest.raises(NonFiniteLossError, match="non-finite training loss at epoch"):
        train(tiny_config(lr=1e30, epochs=3), None, tmp_path)


def test_output_folder_guards(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(tiny_config(), None, tmp_path, resume=True)
    train(tiny_config(epochs=1, max_steps_per_epoch=1), None, tmp_path)
    with pytest.raises(ValueError, match="already holds a training run"):
        train(tiny_config(epochs=1), None, tmp_path)


def test_channels_last_bf16_autocast_and_grad_clip_run_on_cpu(tmp_path):
    config = tiny_config(epochs=1, max_steps_per_epoch=2, channels_last=True, amp="bf16", grad_clip=0.5)
    result = train(config, None, tmp_path)
    assert result["global_step"] == 2 and math.isfinite(result["history"][0]["train_loss"])


def test_model_data_mismatch_is_reported(tmp_path):
    with pytest.raises(ValueError, match="seg_classes=4 contradicts"):
        train(tiny_config(model_options={"seg_classes": 4}), None, tmp_path)
    with pytest.raises(ValueError, match="unknown model 'no_such_model'"):
        train(tiny_config(model="no_such_model"), None, tmp_path)


@pytest.mark.data
def test_trains_a_few_steps_on_real_isic(tmp_path):
    if not (ISIC_REAL / "ISIC-2017_Training_Part3_GroundTruth.csv").is_file():
        pytest.skip(f"real ISIC 2017 data not found at {ISIC_REAL} (only developer and CI machines have it)")
    config = tiny_config(
        data="auto", data_options={}, epochs=1, max_steps_per_epoch=3, max_val_steps=2, cache_dir="off"
    )
    result = train(config, ISIC_REAL, tmp_path)
    _, meta = load_model(tmp_path / "best.safetensors")
    assert meta["data_kind"] == "isic2017" and meta["val_source"] == "carve"  # no official validation folder
    assert result["global_step"] == 3 and result["metrics"]["n_seg_images"] == 8
    # inverse class frequency over the 1800 carved training images stays close to the paper's 1.78 / 2.62 / 0.49
    assert meta["class_weights"] == pytest.approx([1.78, 2.62, 0.49], abs=0.05)
