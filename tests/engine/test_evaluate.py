"""Evaluation: metrics, report files and worst-case overlays on a tiny ISIC tree; meter reduction; plot helpers."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fastmtl.checkpoint.store import load_model
from fastmtl.cli import main
from fastmtl.data import build_dataset
from fastmtl.engine.evaluate.job import EvalState, evaluate, evaluate_model, run_evaluation, sync_state
from fastmtl.engine.evaluate.plots import plot_confusion, plot_examples, plot_history, plot_roc
from fastmtl.engine.overlay import GT_COLOR, draw_overlay, mask_boundary
from fastmtl.files import LOCK_NAME, exclusive_folder
from fastmtl.metrics import ClassificationMeter, SegmentationMeter

SEG_KEYS = ("dsc", "ji", "global_dice", "dsc_lesion", "ji_lesion", "n_seg_images")
CLS_KEYS = ("acc", "sen", "spe", "auc_mean", "auc_melanoma", "acc_nevus", "sen_seborrheic_keratosis", "n_cls_images")


def _is_png(path) -> bool:
    with Image.open(path) as image:
        return image.format == "PNG" and image.width > 0


@pytest.mark.parametrize(("name", "img_size"), [("unet_resnet34_mtl", 64), ("resformer_mtl", 32)])
def test_evaluate_writes_full_report(tmp_path, tiny_checkpoint, isic_root, name, img_size):
    root = isic_root(n=6)
    out = tmp_path / "report"
    report = evaluate(
        tiny_checkpoint(name, img_size), root, "validation", out, batch_size=4, worst_k=3,
        dataset_opts={"cache_dir": False},
    )  # fmt: skip
    metrics = report["metrics"]
    assert set(SEG_KEYS + CLS_KEYS) <= set(metrics)
    assert metrics["n_images"] == metrics["n_cls_images"] == metrics["n_seg_images"] == 6
    assert metrics["n_present_lesion"] == 5  # image 1 has an empty mask
    assert metrics["tp"] + metrics["tn"] + metrics["fp"] + metrics["fn"] == 6 * 3
    assert all(metrics[k] is None or 0.0 <= metrics[k] <= 100.0 for k in ("dsc", "ji", "acc", "auc_melanoma"))
    assert "DSC" in report["table"] and "melanoma" in report["table"]
    assert json.loads((out / "metrics.json").read_text())["metrics"] == metrics
    assert _is_png(out / "roc.png") and _is_png(out / "confusion.png")
    worst = sorted((out / "worst").iterdir())
    assert len(worst) == len(report["worst"]) == 3
    dices = [w["dice"] for w in report["worst"]]
    assert dices == sorted(dices)
    with Image.open(worst[0]) as panel:  # [image | overlay] upscaled to >= 256 px each, a title and a legend
        assert panel.width >= 2 * 256 and panel.height > 256


def test_evaluate_labels_only_split_skips_segmentation(tmp_path, tiny_checkpoint, isic_root):
    root = isic_root(n=4, masks=False)
    report = evaluate(
        tiny_checkpoint(img_size=32), root, "validation", tmp_path / "r", dataset_opts={"cache_dir": False}
    )
    metrics = report["metrics"]
    assert "dsc" not in metrics and metrics["n_cls_images"] == 4
    assert report["worst"] == [] and not (tmp_path / "r" / "worst").exists()
    assert (tmp_path / "r" / "roc.png").is_file()


def test_evaluate_masks_only_split_skips_classification(tmp_path, tiny_checkpoint, isic_root):
    root = isic_root(n=4, labels=False)
    opts = {"cache_dir": False, "require_labels": False}
    report = evaluate(tiny_checkpoint(img_size=32), root, "validation", tmp_path / "r", worst_k=2, dataset_opts=opts)
    metrics = report["metrics"]
    assert "acc" not in metrics and metrics["n_seg_images"] == 4
    assert not (tmp_path / "r" / "roc.png").exists()
    assert len(list((tmp_path / "r" / "worst").glob("*.png"))) == 2


def test_evaluate_model_matches_direct_meters_and_merges(tiny_checkpoint, isic_root):
    model, _ = load_model(tiny_checkpoint(img_size=32))
    dataset = build_dataset("isic2017", isic_root(n=6), "validation", img_size=32, train=False, cache_dir=False)
    kwargs = {"seg_classes": 1, "class_names": dataset.class_names}
    metrics, records = evaluate_model(model, DataLoader(dataset, batch_size=4), **kwargs)
    assert [r["id"] for r in records] == dataset.ids
    assert math.isnan(records[1]["dice"]) or records[1]["dice"] == 0.0  # empty truth: 0 only with false positives

    batch = next(iter(DataLoader(dataset, batch_size=6)))
    with torch.inference_mode():
        out = model(batch["image"])
    seg, cls = SegmentationMeter(1), ClassificationMeter(dataset.class_names)
    seg.update(out.seg_logits, batch["mask"])
    cls.update(out.cls_logits, batch["label"])
    expected = {"n_images": 6, **seg.compute(), **cls.compute()}
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-4, nan_ok=True), key

    # Two "ranks" evaluating halves and merging their states give the single-pass metrics.
    halves = [torch.utils.data.Subset(dataset, idx) for idx in ([0, 2, 4], [1, 3, 5])]
    states = [run_evaluation(model, DataLoader(h, batch_size=2), **kwargs) for h in halves]
    merged = EvalState.from_state(states[0].to_state()).merge(EvalState.from_state(states[1].to_state()))
    assert sync_state(merged) is merged  # no process group: unchanged
    for key, value in merged.metrics().items():
        assert value == pytest.approx(metrics[key], rel=1e-5, abs=1e-4, nan_ok=True), key


def test_evaluate_rejects_mismatched_model(tmp_path, tiny_checkpoint, isic_root):
    with pytest.raises(ValueError, match="class logits"):
        evaluate(
            tiny_checkpoint(img_size=32, cls_classes=2),
            isic_root(n=2),
            "validation",
            tmp_path,
            dataset_opts={"cache_dir": False},
        )


def test_overlay_marks_prediction_and_truth():
    image = np.full((20, 30, 3), 100, np.uint8)
    pred = np.zeros((20, 30), np.int64)
    pred[5:15, 5:15] = 1
    gt = np.zeros((20, 30), np.int64)
    gt[2:18, 18:28] = 1
    out = draw_overlay(image, pred, gt)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (out[10, 10] != image[10, 10]).any()  # filled prediction
    assert (out[2, 20] == GT_COLOR).all() and (out[10, 22] == image[10, 22]).all()  # outline only
    edge = mask_boundary(pred == 1)
    assert edge.sum() == 36 and not edge[10, 10]  # a 10x10 square has 36 boundary pixels


def test_plots_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]])
    probs = rng.random(labels.shape)
    names = ["a", "b", "c"]
    plot_roc(probs, labels, names, tmp_path / "roc.png")
    plot_confusion(np.array([[1, 0, 2], [2, 3, 1], [1, 0, 0], [0, 1, 1]]), names, tmp_path / "conf.png")
    plot_history({"train_loss": [1.0, 0.5, 0.4], "val_dsc": [50.0, float("nan"), 70.0]}, tmp_path / "curves.png")
    assert all(_is_png(tmp_path / f) for f in ("roc.png", "conf.png", "curves.png"))
    with pytest.raises(ValueError, match="TP/TN/FP/FN"):
        plot_confusion(np.zeros((3, 3)), names, tmp_path / "x.png")


def test_example_grid_has_a_row_per_example(tmp_path):
    from PIL import Image

    image = np.full((24, 32, 3), 90, np.uint8)
    gt = np.zeros((24, 32), np.int64)
    gt[4:12, 4:12], gt[14:20, 20:28] = 1, 3
    rows = [("case a", image, gt, gt), ("case b", image, gt, None)]  # a model without a seg head shows the image
    one = plot_examples(rows[:1], tmp_path / "one.png", ("irf", "srf", "ped"))
    two = plot_examples(rows, tmp_path / "two.png")
    assert _is_png(one) and _is_png(two)
    assert Image.open(two).height > Image.open(one).height
    with pytest.raises(ValueError, match="at least one"):
        plot_examples([], tmp_path / "none.png")


def test_a_second_job_into_a_busy_report_folder_is_refused_naming_the_holder(
    tmp_path, tiny_checkpoint, isic_root, capsys
):
    out = tmp_path / "report"
    args = ["eval", "--checkpoint", str(tiny_checkpoint(img_size=32)), "--data-root", str(isic_root(n=2)),
            "--split", "validation", "--out", str(out), "--workers", "0"]  # fmt: skip
    with exclusive_folder(out, "train"):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert (out / LOCK_NAME).is_file()  # the holder's lock stays
    assert err.startswith(f"fastmtl: error: {out} is in use by another fastmtl job (train, pid {os.getpid()}")
    assert len(err.splitlines()) == 1 and not (out / "metrics.json").exists()
    assert main(args) == 0 and (out / "metrics.json").is_file()  # free again: the same command runs
    assert not (out / LOCK_NAME).exists()
