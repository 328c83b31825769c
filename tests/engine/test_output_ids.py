"""Output names that collide: inputs whose names map to one output id (differing only in characters the id
sanitizer replaces, in case, or in their extension) get deterministic unique ids, one mask, one overlay and one
CSV row each, the id recorded next to the source path; a name whose bytes are not UTF-8 is kept, escaped in the
CSV, instead of failing the run."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastmtl.data.inputs import image_ids
from fastmtl.engine.predict.job import predict

# "a jpg.png" is id a_jpg, the suffix the clash of a.jpg and a.png once gave a.jpg as well: one mask for two images
_NAMES = ["a jpg.png", "a.jpg", "a.png", "a b.png", "a_b.png", "a-b.png", "a_b_png.png", "a?b.png", "A_B.png"]


def test_ids_never_collide_and_do_not_depend_on_the_input_order():
    paths = sorted(Path("/d") / name for name in _NAMES)
    ids = image_ids(paths)
    assert len({i.casefold() for i in ids}) == len(paths)  # unique even on a case-insensitive file system
    named = dict(zip((p.name for p in paths), ids, strict=True))
    assert named["a_b_png.png"] == "a_b_png" and named["a-b.png"] == "a-b"  # a unique name keeps its id
    assert named["a jpg.png"] == "a_jpg" and named["a.jpg"] == "a_jpg_2" and named["a.png"] == "a_png"
    assert image_ids(paths) == ids


def test_predict_writes_one_mask_overlay_and_row_per_colliding_input(tmp_path, tiny_checkpoint):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pixels = {}
    for name in _NAMES:
        pixels[name] = rng.integers(0, 255, (20 + len(pixels), 24, 3), dtype=np.uint8)  # a height per image
        Image.fromarray(pixels[name]).save(folder / name)
    out = tmp_path / "out"
    summary = predict(tiny_checkpoint(img_size=32), folder, out, num_workers=0, overlays=True)
    assert summary.n_images == len(_NAMES)
    with open(out / "probabilities.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert sorted(Path(row["path"]).name for row in rows) == sorted(_NAMES)
    assert len({row["id"] for row in rows}) == len(_NAMES) and all(row["mask"] == f"{row['id']}.png" for row in rows)
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(row["mask"] for row in rows)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == sorted(row["mask"] for row in rows)
    for row in rows:  # each mask is its own image's: the original size tells them apart
        height = pixels[Path(row["path"]).name].shape[0]
        assert Image.open(out / "masks" / row["mask"]).size == (24, height)
    overlays = {(out / "overlays" / row["mask"]).read_bytes() for row in rows}  # (resized and titled for reading)
    assert len(overlays) == len(rows)  # none overwritten by another image's


@pytest.mark.skipif(os.uname().sysname == "Darwin", reason="macOS file systems refuse names that are not UTF-8")
def test_predict_keeps_a_file_name_that_is_not_utf8(tmp_path, tiny_checkpoint):
    folder = tmp_path / "images"
    folder.mkdir()
    odd = os.path.join(os.fsencode(folder), b"caf\xe9.png")  # Latin-1 bytes from an old archive
    Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(os.fsdecode(odd))
    Image.fromarray(np.full((20, 24, 3), 200, np.uint8)).save(folder / "plain.png")
    (folder / "broken\udcff.png").write_bytes(b"not an image")  # a failure whose name is not UTF-8 either
    summary = predict(tiny_checkpoint(img_size=32), folder, tmp_path / "out", num_workers=0)
    assert summary.n_images == 2 and summary.n_failed == 1
    text = (tmp_path / "out" / "probabilities.csv").read_bytes().decode("utf-8")  # valid UTF-8 throughout
    rows = list(csv.DictReader(text.splitlines()))
    assert sorted(os.path.basename(r["path"]) for r in rows) == ["caf\\xe9.png", "plain.png"]
    assert all((tmp_path / "out" / "masks" / r["mask"]).is_file() for r in rows)
    failures = (tmp_path / "out" / "failures.csv").read_bytes().decode("utf-8")
    assert "broken\\xff.png" in failures


def test_eval_writes_one_worst_case_panel_per_image_whose_ids_sanitize_alike(tmp_path, tiny_checkpoint):
    from fastmtl.engine.evaluate.job import evaluate

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    mask = np.zeros((24, 24), np.uint8)
    mask[6:18, 6:18] = 255
    for i, name in enumerate(["a b", "a_b", "a?b"]):
        Image.fromarray(np.full((24, 24, 3), 60 * i, np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    (root / "labels.csv").write_text("id,class0,class1,class2\na b,1,0,0\na_b,0,1,0\na?b,0,0,1\n")
    report = evaluate(tiny_checkpoint(img_size=32), root, "train", tmp_path / "eval", kind="folder", num_workers=0)
    assert len(report["worst"]) == 3
    assert sorted(p.name for p in (tmp_path / "eval" / "worst").iterdir()) == ["a_b.png", "a_b_2.png", "a_b_3.png"]
