"""Prediction folders describe exactly one run: a rerun (after a complete or a killed run) starts clean, a busy
folder is refused with its holder, and a folder holding someone else's masks is never emptied."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from PIL import Image

from fastmtl.engine.predict.job import predict
from fastmtl.engine.predict.writer import MARKER
from fastmtl.files import FolderBusyError, exclusive_folder


def _rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_a_rerun_leaves_no_stale_masks_or_failures(tmp_path, tiny_checkpoint, image_files, corrupt_image):
    out, checkpoint = tmp_path / "out", tiny_checkpoint(img_size=32)
    first = predict(checkpoint, tmp_path / "images", out, num_workers=0, overlays=True)
    assert first.n_failed == 1 and (out / "failures.csv").is_file()
    assert len(list((out / "masks").iterdir())) == len(image_files)

    subset = [image_files["rgb"][0], image_files["grey"][0]]
    second = predict(checkpoint, subset, out, num_workers=0)
    rows = _rows(out / "probabilities.csv")
    assert second.n_images == 2 and sorted(r["id"] for r in rows) == ["grey", "rgb"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(r["mask"] for r in rows)
    assert not (out / "failures.csv").exists()  # the old failures belonged to the first run
    assert list((out / "overlays").iterdir()) == []  # overlays were not asked for this time


def test_a_rerun_after_a_killed_run_removes_its_partial_outputs(tmp_path, tiny_checkpoint, image_files):
    out = tmp_path / "out"
    # what a run killed before its CSV leaves: the marker, some masks, a temporary of the mask being written
    (out / "masks").mkdir(parents=True)
    (out / MARKER).write_text("")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(out / "masks" / "stale.png")
    (out / "masks" / ".photo.png.abc.tmp").write_bytes(b"half")
    predict(tiny_checkpoint(img_size=32), image_files["rgb"][0], out, num_workers=0)
    assert [p.name for p in (out / "masks").iterdir()] == ["rgb.png"]
    assert [r["id"] for r in _rows(out / "probabilities.csv")] == ["rgb"]


def test_a_folder_with_foreign_masks_is_refused_and_kept(tmp_path, tiny_checkpoint, image_files):
    dataset = tmp_path / "dataset"  # e.g. --out pointed at a folder-layout dataset by mistake
    (dataset / "masks").mkdir(parents=True)
    truth = dataset / "masks" / "case1.png"
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(truth)
    with pytest.raises(ValueError, match="holds files that fastmtl predict did not write"):
        predict(tiny_checkpoint(img_size=32), image_files["rgb"][0], dataset, num_workers=0)
    assert truth.is_file() and not (dataset / "probabilities.csv").exists()


def test_a_second_prediction_into_a_busy_folder_is_refused(tmp_path, tiny_checkpoint, image_files):
    out = tmp_path / "out"
    with exclusive_folder(out, "predict"):
        with pytest.raises(FolderBusyError, match=rf"another fastmtl job \(predict, pid {os.getpid()}"):
            predict(tiny_checkpoint(img_size=32), image_files["rgb"][0], out, num_workers=0)
    assert not (out / "masks").exists()


def test_a_typo_in_the_inputs_keeps_the_earlier_results(tmp_path, tiny_checkpoint, image_files):
    out, checkpoint = tmp_path / "out", tiny_checkpoint(img_size=32)
    predict(checkpoint, image_files["rgb"][0], out, num_workers=0)
    with pytest.raises(FileNotFoundError):
        predict(checkpoint, tmp_path / "no-such-folder", out, num_workers=0)
    assert (out / "masks" / "rgb.png").is_file() and (out / "probabilities.csv").is_file()
