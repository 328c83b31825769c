"""Inputs that used to be read silently wrong: masks marking the lesion with a value other than 255, CSV ids that
lead out of the data folder, invalid or conflicting labels, numeric options without meaning; and training data
errors raised in DataLoader workers, which must reach the user as one line naming the file."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastmtl.cli import main
from fastmtl.data import ISIC2017
from fastmtl.data.base import binarize_mask
from fastmtl.data.io import read_mask
from fastmtl.engine.train.config import FLAT_KEYS, config_from_dict
from tests.engine.conftest import write_isic_split
from tests.engine.test_train import tiny_config  # registers tiny_mtl_test
from tests.test_cli import TINY, _error, _tiny_toml


def _ellipse(h=40, w=48) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - h / 2) ** 2 / (h / 3) ** 2 + (xx - w / 2) ** 2 / (w / 3) ** 2) < 1


@pytest.mark.parametrize(
    ("value", "dtype"), [(1, np.uint8), (2, np.uint8), (100, np.uint8), (255, np.uint8), (1000, np.uint16)]
)
def test_a_clean_label_map_is_read_whatever_its_lesion_value(tmp_path, value, dtype):
    lesion = _ellipse()
    path = tmp_path / "mask.png"
    Image.fromarray((lesion * value).astype(dtype)).save(path)
    assert np.array_equal(binarize_mask(read_mask(path)), lesion.astype(np.uint8))


def test_noisy_masks_keep_their_thresholds():
    rng = np.random.default_rng(0)
    lesion = _ellipse()
    noisy = np.clip(lesion * 255.0 + rng.normal(0, 20, lesion.shape), 0, 255).astype(np.uint8)  # JPEG-like 0/255
    assert np.array_equal(binarize_mask(noisy), lesion.astype(np.uint8))
    assert binarize_mask(np.zeros((4, 4), np.uint8)).sum() == 0


def test_isic_masks_with_other_lesion_values_load_as_lesions(tmp_path):
    root = write_isic_split(tmp_path, n=3)
    truth = root / "ISIC-2017_Validation_Part1_GroundTruth"
    Image.fromarray((_ellipse() * 2).astype(np.uint8)).save(truth / "ISIC_0000000_segmentation.png")
    Image.fromarray((_ellipse() * 1000).astype(np.uint16)).save(truth / "ISIC_0000002_segmentation.png")
    data = ISIC2017(root, "validation", img_size=(40, 48), cache_dir=False)
    for index in (0, 2):
        assert np.array_equal(data[index]["mask"].numpy(), _ellipse().astype(np.int64)), index


def _isic_with_rows(tmp_path, rows: list[str]):
    root = write_isic_split(tmp_path, n=3)
    csv_path = root / "ISIC-2017_Validation_Part3_GroundTruth.csv"
    csv_path.write_text("\n".join(["image_id,melanoma,seborrheic_keratosis", *rows]) + "\n")
    return root


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["../../ISIC_0000000,0,0"], "is not a plain file name"),
        (["/etc/ISIC_0000000,0,0"], "is not a plain file name"),
        (["..,0,0"], "is not a plain file name"),
        (["ISIC_0000000,1,0", "ISIC_0000000,0,1"], r"listed twice \(also on line 2\)"),
        (["ISIC_0000000,1,1"], "both melanoma and seborrheic keratosis"),
        (["ISIC_0000000,2,0"], "labels must be 0 or 1"),
        (["ISIC_0000000,-1,0"], "labels must be 0 or 1"),
        (["ISIC_0000000,inf,0"], "labels must be 0 or 1"),
        (["ISIC_0000000,nan,0"], "labels must be 0 or 1"),
    ],
)
def test_isic_label_rows_are_validated(tmp_path, rows, message):
    root = _isic_with_rows(tmp_path, rows)
    with pytest.raises(ValueError, match=message):
        ISIC2017(root, "validation", img_size=32, cache_dir=False)


@pytest.mark.parametrize(
    ("table", "message"),
    [("id,a,b\nx,0,2\n", "labels must be 0 or 1"), ("id,a,b\nx,0,1\nx.png,1,0\n", "listed twice")],
)
def test_folder_label_tables_are_validated(tmp_path, table, message):
    from fastmtl.data.folder import read_label_table

    (tmp_path / "labels.csv").write_text(table)
    with pytest.raises(ValueError, match=message):
        read_label_table(tmp_path / "labels.csv")


@pytest.mark.parametrize(
    "change",
    [
        {"grad_clip": math.nan},
        {"grad_clip": -1.0},
        {"poly_power": -0.9},
        {"poly_power": math.inf},
        {"alpha": math.nan},
        {"weight_decay": math.inf},
        {"time_limit_min": math.nan},
    ],
)
def test_numeric_options_without_meaning_are_refused(change):
    (key,) = change
    with pytest.raises(ValueError, match=f"config {FLAT_KEYS[key]} must be a finite number >= 0"):
        config_from_dict(change)


def test_predict_refuses_a_threshold_outside_0_1(tmp_path):
    from fastmtl.engine.predict.job import predict

    for threshold in (0.0, 1.0, 1.5, math.nan):
        with pytest.raises(ValueError, match="threshold must lie strictly between 0 and 1"):
            predict(tmp_path / "absent.safetensors", tmp_path, tmp_path / "out", threshold=threshold)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_truncated_training_image_is_one_error_line_naming_it(tmp_path, capsys, workers):
    root = write_isic_split(tmp_path / "isic", "Training", n=8)
    broken = root / "ISIC-2017_Training_Data" / "ISIC_0000003.jpg"
    broken.write_bytes(broken.read_bytes()[:200])  # a truncated JPEG: the header reads, the pixels do not
    args = ["train", "--config", str(_tiny_toml(tmp_path)), "--data-root", str(root), "--out", str(tmp_path / "run"),
            "--set", "data=auto", "--set", "data_options={}", "--set", "val_fraction=0.25", *TINY,
            "--set", f"num_workers={workers}", "--set", f"cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    assert main(args) == 2
    err = _error(capsys)
    assert "ISIC_0000003.jpg" in err and len(err.splitlines()) == 1


def test_a_mask_of_another_size_is_one_error_line_naming_both_files(tmp_path, capsys):
    root = write_isic_split(tmp_path / "isic", "Training", n=8)
    mask = root / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000004_segmentation.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(mask)
    args = ["train", "--config", str(_tiny_toml(tmp_path)), "--data-root", str(root), "--out", str(tmp_path / "run"),
            "--set", "data=auto", "--set", "data_options={}", "--set", "val_fraction=0.25", *TINY,
            "--set", "num_workers=2", "--set", f"cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    assert main(args) == 2
    err = _error(capsys)
    assert "size mismatch" in err and "ISIC_0000004_segmentation.png" in err and len(err.splitlines()) == 1


def test_tiny_config_is_still_valid():
    assert tiny_config().optim.grad_clip == 0.0


def test_check_data_lists_every_problem_in_one_table_and_csv(tmp_path, capsys, monkeypatch):
    import csv

    monkeypatch.setenv("FASTMTL_CACHE", str(tmp_path / "cache"))
    root = write_isic_split(tmp_path / "isic", "Training", n=6)
    data, truth = root / "ISIC-2017_Training_Data", root / "ISIC-2017_Training_Part1_GroundTruth"
    (data / "ISIC_0000001.jpg").write_bytes((data / "ISIC_0000001.jpg").read_bytes()[:200])  # truncated
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(truth / "ISIC_0000002_segmentation.png")  # wrong size
    noisy = (np.arange(40 * 48).reshape(40, 48) % 7).astype(np.uint8)  # 7 values: not a label map
    Image.fromarray(noisy).save(truth / "ISIC_0000003_segmentation.png")
    rotated = Image.open(data / "ISIC_0000004.jpg")
    exif = rotated.getexif()
    exif[0x0112] = 6  # shown turned by 90 degrees; the mask below was drawn on that view (48x40, not 40x48)
    rotated.save(data / "ISIC_0000004.jpg", exif=exif)
    Image.fromarray(np.zeros((48, 40), np.uint8)).save(truth / "ISIC_0000004_segmentation.png")
    Image.new("RGB", (48, 40)).save(data / "ISIC_0000099.jpg")  # an image without a label row
    report = tmp_path / "report.csv"
    args = ["check-data", "--data-root", str(root), "--split", "training", "--out", str(report)]
    for _ in range(2):  # the second run answers from the cache, with the same findings
        assert main(args) == 2
        out, err = capsys.readouterr()
        assert "fastmtl: error: 5 problem(s)" in err and str(report) in err and "Traceback" not in err
        with open(report, newline="") as file:
            rows = {(Path(r["path"]).name, r["problem"]) for r in csv.DictReader(file)}
        assert rows == {
            ("ISIC_0000001.jpg", "unreadable image"),
            ("ISIC_0000002_segmentation.png", "size mismatch"),
            ("ISIC_0000003_segmentation.png", "mask values"),
            ("ISIC_0000004.jpg", "exif orientation"),
            ("ISIC_0000099.jpg", "image without a label"),
        }
        assert "read as lesion where the value is above 3" in out


def test_check_data_reports_label_table_problems_and_passes_clean_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FASTMTL_CACHE", str(tmp_path / "cache"))
    root = write_isic_split(tmp_path / "isic", "Training", n=3)
    assert main(["check-data", "--data-root", str(root), "--out", str(tmp_path / "ok.csv")]) == 0
    assert "no problems" in capsys.readouterr().out
    (root / "ISIC-2017_Training_Part3_GroundTruth.csv").write_text("image_id,melanoma,seborrheic_keratosis\n../x,0,0\n")
    assert main(["check-data", "--data-root", str(root), "--out", str(tmp_path / "bad.csv")]) == 2
    assert "not a plain file name" in capsys.readouterr().out


def _train_args(tmp_path, root, *extra):
    return ["train", "--config", str(_tiny_toml(tmp_path)), "--data-root", str(root), "--out", str(tmp_path / "run"),
            "--set", "data=auto", "--set", "data_options={}", "--set", "val_fraction=0.25", *TINY,
            "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "epochs=1", *extra]  # fmt: skip


def test_training_stops_before_any_step_naming_every_bad_case_or_skips_them(tmp_path, capsys):
    import json

    root = write_isic_split(tmp_path / "isic", "Training", n=8)
    data, truth = root / "ISIC-2017_Training_Data", root / "ISIC-2017_Training_Part1_GroundTruth"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(truth / "ISIC_0000004_segmentation.png")  # wrong size
    (data / "ISIC_0000006.jpg").write_bytes(b"not an image")
    assert main(_train_args(tmp_path, root)) == 2
    err = _error(capsys)
    assert "2 bad case(s)" in err and "ISIC_0000004_segmentation.png: size mismatch" in err
    assert "ISIC_0000006.jpg: unreadable image" in err and "--skip-bad" in err
    assert not (tmp_path / "run" / "last.safetensors").exists()

    assert main(_train_args(tmp_path, root, "--skip-bad")) == 0
    assert "left out 2 bad case(s) (--skip-bad)" in capsys.readouterr().err
    record = json.loads((tmp_path / "run" / "split.json").read_text())
    assert sorted(s["id"] for s in record["skipped"]) == ["ISIC_0000004", "ISIC_0000006"]
    used = set(record["train_ids"]) | set(record["val_ids"])
    assert len(used) == 6 and not used & {"ISIC_0000004", "ISIC_0000006"}


def test_evaluation_checks_its_split_before_any_batch(tmp_path, capsys):
    root = write_isic_split(tmp_path / "isic", "Training", n=8)
    assert main(_train_args(tmp_path, root)) == 0  # a checkpoint trained on the clean split
    capsys.readouterr()
    mask = root / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000002_segmentation.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(mask)
    args = ["eval", "--checkpoint", str(tmp_path / "run" / "best.safetensors"), "--data-root", str(root),
            "--split", "training", "--out", str(tmp_path / "eval"), "--workers", "0"]  # fmt: skip
    assert main(args) == 2
    err = _error(capsys)
    assert "1 bad case(s) in the training split" in err and "ISIC_0000002_segmentation.png: size mismatch" in err
    assert not (tmp_path / "eval" / "metrics.json").exists()
