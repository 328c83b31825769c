"""Checkpoints carry the training dataset's class names; predict and export read them from there."""

from __future__ import annotations

import csv

import torch

import fastmtl
from fastmtl.checkpoint.store import read_checkpoint_info, save_checkpoint, stored_class_names
from fastmtl.data import SyntheticLesions
from fastmtl.engine.predict.job import predict
from fastmtl.engine.train.job import train
from fastmtl.inference.export import export_metadata
from tests.engine.test_train import tiny_config


def test_training_stores_the_dataset_names_and_predict_uses_them(tmp_path, image_files):
    train(tiny_config(epochs=1, max_steps_per_epoch=1, max_val_steps=1), None, tmp_path / "run")
    names = tuple(SyntheticLesions.class_names)
    for stem in ("best", "last"):
        config, meta = read_checkpoint_info(tmp_path / "run" / f"{stem}.safetensors")
        assert stored_class_names(config, meta) == (names, tuple(SyntheticLesions.seg_class_names))
    summary = predict(tmp_path / "run" / "best.safetensors", tmp_path / "images", tmp_path / "out", num_workers=0)
    with open(summary.csv_path, newline="") as file:
        columns = set(next(csv.DictReader(file)))
    assert {f"prob_{name}" for name in names} | {f"pred_{name}" for name in names} <= columns


def test_a_checkpoint_without_names_gets_generic_ones(tmp_path):
    torch.manual_seed(0)
    model = fastmtl.create_model("unet_resnet34_mtl", img_size=32, seg_classes=4, cls_classes=2)
    config, meta = read_checkpoint_info(save_checkpoint(tmp_path / "old", model))
    assert stored_class_names(config, meta) == (("class0", "class1"), ("class1", "class2", "class3"))
    exported = export_metadata(model, meta, 32)
    assert exported["class_names"] == "class0,class1" and exported["seg_class_names"] == "class1,class2,class3"
