"""EXIF orientation in the data preflight: fastmtl reads the stored pixels unrotated, so a tag is a problem only when
the mask was drawn on the rotated view (a tag that turns the picture by 90 degrees and a mask of the turned size);
any other tag is a note that does not fail ``fastmtl check-data``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastmtl.cli import main
from fastmtl.data import check_data, write_report
from tests.engine.conftest import write_isic_split

SIZE = (40, 48)  # stored H x W of every image of the split


def _tag(path: Path, orientation: int) -> None:
    with Image.open(path) as image:
        image.load()
        exif = image.getexif()
        exif[0x0112] = orientation
        image.save(path, exif=exif)


@pytest.fixture
def split(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMTL_CACHE", str(tmp_path / "cache"))
    root = write_isic_split(tmp_path / "isic", "Training", n=5, size=SIZE)
    return root, root / "ISIC-2017_Training_Data", root / "ISIC-2017_Training_Part1_GroundTruth"


def _mask(truth: Path, index: int, shape: tuple[int, int]) -> None:
    Image.fromarray(np.zeros(shape, np.uint8)).save(truth / f"ISIC_{index:07d}_segmentation.png")


def test_a_mask_drawn_on_the_rotated_view_is_a_problem_other_tags_are_notes(split, tmp_path):
    root, data, truth = split
    for index, tag in ((0, 6), (1, 6), (2, 3), (3, 8), (4, 5)):
        _tag(data / f"ISIC_{index:07d}.jpg", tag)
    _mask(truth, 0, SIZE[::-1])  # tag 6 shows 48x40: the mask was drawn on that view
    _mask(truth, 4, SIZE[::-1])  # tag 5 (transpose) turns the picture too
    _mask(truth, 3, (10, 12))  # fits neither view: a plain size mismatch, and a note about the tag
    problems = check_data(root, "training", progress=False)
    assert sorted((Path(p.path).name, p.problem) for p in problems) == [
        ("ISIC_0000000.jpg", "exif orientation"),
        ("ISIC_0000003_segmentation.png", "size mismatch"),
        ("ISIC_0000004.jpg", "exif orientation"),
    ]  # the turned masks are not also reported as size mismatches: the orientation explains them
    turned = next(p for p in problems if p.path.endswith("ISIC_0000000.jpg"))
    assert "tag 6" in turned.detail and "the mask is 48x40 (HxW)" in turned.detail
    assert "stored 40x48 pixels" in turned.detail and "drawn on the rotated image" in turned.detail
    everything = check_data(root, "training", progress=False, include_notes=True)
    notes = {Path(p.path).name: p.detail for p in everything if p.note}
    assert set(notes) == {"ISIC_0000001.jpg", "ISIC_0000002.jpg", "ISIC_0000003.jpg"}
    assert notes["ISIC_0000001.jpg"].endswith("fastmtl reads them unrotated (its mask fits them)")
    assert "rotated by 180 degrees" in notes["ISIC_0000002.jpg"]
    write_report(everything, tmp_path / "all.csv")
    with open(tmp_path / "all.csv", newline="") as file:
        kinds = [row["problem"] for row in csv.DictReader(file)]
    assert kinds.count("note: exif orientation") == 3 and kinds.count("exif orientation") == 2


def test_an_orientation_the_mask_agrees_with_does_not_fail_check_data(split, tmp_path, capsys):
    root, data, _ = split
    _tag(data / "ISIC_0000002.jpg", 6)  # the mask keeps the stored 40x48 size
    report = tmp_path / "report.csv"
    for _ in range(2):  # the second run answers from the cache, alike
        assert main(["check-data", "--data-root", str(root), "--out", str(report)]) == 0
        printed = capsys.readouterr().out
        assert "no problems" in printed and "note: exif orientation" in printed and "ISIC_0000002.jpg" in printed
    assert "note: exif orientation" in report.read_text()
    assert check_data(root, "training", progress=False, include_notes=True)[0].note


def test_a_square_image_or_one_without_a_mask_gets_a_note_only(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMTL_CACHE", str(tmp_path / "cache"))
    square = write_isic_split(tmp_path / "square", "Training", n=1, size=(32, 32))
    unmasked = write_isic_split(tmp_path / "bare", "Training", n=1, masks=False)
    for root, fits in ((square, "its mask fits them"), (unmasked, "no mask to compare")):
        _tag(root / "ISIC-2017_Training_Data" / "ISIC_0000000.jpg", 8)
        assert check_data(root, "training", progress=False) == []
        (note,) = check_data(root, "training", progress=False, include_notes=True)
        assert note.note and fits in note.detail
