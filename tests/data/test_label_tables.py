"""Label tables with many problems: ``fastmtl check-data`` lists every one of them in one run (ISIC CSV, a folder's
labels.csv, an OCT manifest, RETOUCH volumes), while the dataset itself refuses the table with one line naming the
file, the row and the value of the first problem and counting the others."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from fastmtl.cli import main
from fastmtl.data import ISIC2017, ImageFolder, OCTManifest, Retouch, check_data
from fastmtl.data.tables import LabelTableError, MissingImageError
from tests.engine.conftest import write_isic_split

ISIC_CSV = "ISIC-2017_Training_Part3_GroundTruth.csv"


def _lines(problems, table: str) -> set[tuple[int, str]]:
    """{(row, problem kind)} of the problems found in the table named ``table``."""
    found = set()
    for p in problems:
        file, _, line = p.path.rpartition(":")
        if Path(file).name == table:
            found.add((int(line), p.problem))
    return found


def _report_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture
def bad_isic(tmp_path) -> Path:
    """Four images; a CSV that breaks every rule once; an image without a row."""
    root = write_isic_split(tmp_path / "isic", "Training", n=4)
    rows = [
        "ISIC_0000000,1,0",  # 2 ok
        "ISIC_0000000,1,0",  # 3 the same row again
        "ISIC_0000001,0,1",  # 4 ok
        "ISIC_0000001,1,0",  # 5 listed again with other labels
        "ISIC_0000002,2,0",  # 6 out of range
        "ISIC_0000002,inf,0",  # 7 not finite
        "ISIC_0000003,nan,1",  # 8 not finite
        "ISIC_0000003,1,1",  # 9 melanoma and seborrheic keratosis
        "../ISIC_0000003,0,0",  # 10 leads out of the data folder
        "ISIC_0000077,0,0",  # 11 no such image
        "ISIC_0000003,yes,0",  # 12 not a number
    ]
    (root / ISIC_CSV).write_text("\n".join(["image_id,melanoma,seborrheic_keratosis", *rows]) + "\n")
    Image.new("RGB", (48, 40)).save(root / "ISIC-2017_Training_Data" / "ISIC_0000099.jpg")
    return root


ISIC_FINDINGS = {
    (3, "duplicate id"),
    (5, "conflicting labels"),
    (6, "label value"),
    (7, "label value"),
    (8, "label value"),
    (9, "two positive classes"),
    (10, "id not a plain name"),
    (11, "label without an image"),
    (12, "label value"),
}


def test_check_data_lists_every_problem_of_an_isic_label_table(bad_isic, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FASTMTL_CACHE", str(tmp_path / "cache"))
    report = tmp_path / "report.csv"
    assert main(["check-data", "--data-root", str(bad_isic), "--out", str(report)]) == 2
    out, err = capsys.readouterr()
    assert err.strip().endswith(f"report: {report}") and "fastmtl: error: 10 problem(s)" in err
    rows = _report_rows(report)
    assert len(rows) == 10
    assert _lines([SimpleNamespace(**r) for r in rows], ISIC_CSV) == ISIC_FINDINGS
    assert {(Path(r["path"]).name, r["problem"]) for r in rows if ".csv:" not in r["path"]} == {
        ("ISIC_0000099.jpg", "image without a label")
    }
    details = {r["path"].rpartition(":")[2]: r["detail"] for r in rows}
    assert details["3"] == "ISIC_0000000 is listed twice (also on line 2)"
    assert details["5"].startswith("ISIC_0000001 is listed twice (also on line 4) with other labels: melanoma=1")
    assert details["6"] == "labels must be 0 or 1, got melanoma=2 for ISIC_0000002"
    assert details["7"] == "labels must be 0 or 1, got melanoma=inf for ISIC_0000002"
    assert details["9"] == "ISIC_0000003 is labelled both melanoma and seborrheic keratosis (they exclude each other)"
    assert "'../ISIC_0000003' is not a plain file name" in details["10"]
    assert "ISIC_0000077 has no image in" in details["11"]
    assert details["12"] == "labels must be 0 or 1, got melanoma=yes (non-numeric) for ISIC_0000003"
    assert "two positive classes" in out and "ISIC_0000077" in out  # the printed table lists them too


def test_the_isic_dataset_refuses_the_table_naming_the_first_problem_and_counting_the_rest(bad_isic):
    with pytest.raises(LabelTableError) as caught:
        ISIC2017(bad_isic, "training", img_size=32, cache_dir=False)
    message = str(caught.value)
    csv_path = bad_isic / ISIC_CSV
    assert message == (
        f"{csv_path}:3: ISIC_0000000 is listed twice (also on line 2) (and 8 more problem(s) in {ISIC_CSV}; "
        "`fastmtl check-data` lists them all)"
    )
    assert len(caught.value.problems) == 9  # the image without a row is no reason to refuse: it is no sample
    lenient = ISIC2017(bad_isic, "training", img_size=32, cache_dir=False, strict_labels=False)
    assert lenient.ids == ["ISIC_0000000", "ISIC_0000001"] and lenient.labels.tolist() == [[1, 0, 0], [0, 1, 0]]
    assert _lines(lenient.label_problems, ISIC_CSV) == ISIC_FINDINGS


def test_a_table_whose_first_problem_is_a_missing_image_is_also_a_file_not_found_error(tmp_path):
    root = write_isic_split(tmp_path / "isic", "Training", n=2)
    (root / ISIC_CSV).write_text("image_id,melanoma,seborrheic_keratosis\nISIC_0000005,0,0\nISIC_0000000,3,0\n")
    with pytest.raises(MissingImageError, match=r"csv:2: ISIC_0000005 has no image in .* \(and 1 more") as caught:
        ISIC2017(root, "training", img_size=32, cache_dir=False)
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, ValueError)
    copy = pickle.loads(pickle.dumps(caught.value))  # as it would cross a process boundary
    assert type(copy) is MissingImageError and str(copy) == str(caught.value) and copy.problems == caught.value.problems


def test_missing_masks_are_listed_one_by_one(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMTL_CACHE", str(tmp_path / "cache"))
    root = write_isic_split(tmp_path / "isic", "Training", n=4)
    truth = root / "ISIC-2017_Training_Part1_GroundTruth"
    for i in (1, 3):
        (truth / f"ISIC_000000{i}_segmentation.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"2 mask\(s\) missing"):
        ISIC2017(root, "training", img_size=32, cache_dir=False)
    found = {(Path(p.path).name, p.problem) for p in check_data(root, "training", progress=False)}
    assert found == {(f"ISIC_000000{i}_segmentation.png", "missing mask") for i in (1, 3)}


def test_check_data_lists_every_problem_of_a_folder_label_table(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMTL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "data" / "images").mkdir(parents=True)
    for name in "abce":
        Image.new("RGB", (16, 12)).save(tmp_path / "data" / "images" / f"{name}.png")
    rows = ["a.png,1,0", "a,1,0", "b,0,1", "b.png,1,1", "sub/c.png,0,1", "c,0,2", "zzz,1,0", "d,1"]
    (tmp_path / "data" / "labels.csv").write_text("\n".join(["id,cat,dog", *rows]) + "\n")
    expected = {
        (3, "duplicate id"),
        (5, "conflicting labels"),  # cat and dog do not exclude each other: only the second row conflicts
        (6, "id not a plain name"),
        (7, "label value"),
        (8, "label without an image"),
        (9, "label table"),
    }
    problems = check_data(tmp_path / "data", progress=False)
    assert _lines(problems, "labels.csv") == expected and len(problems) == len(expected)  # e.png: unlabelled, fine
    with pytest.raises(ValueError, match=r"labels.csv:3: a is listed twice \(also on line 2\) \(and 5 more"):
        ImageFolder(tmp_path / "data", img_size=8, cache_dir=False)


def test_check_data_notes_folder_images_without_a_label_row_or_a_mask_and_writes_no_file_unasked(
    tmp_path, capsys, monkeypatch
):
    """In the folder layout labels and masks are optional per image, so an image missing from an existing
    labels.csv or masks/ is a note (it is used without them), listed by check-data, which exits 0 for notes alone
    and writes a CSV only where --out says."""
    monkeypatch.setenv("FASTMTL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for name in "abc":
        Image.new("RGB", (16, 12)).save(root / "images" / f"{name}.png")
    for name in "ac":
        Image.new("L", (16, 12)).save(root / "masks" / f"{name}_mask.png")
    (root / "labels.csv").write_text("id,cat,dog\na,1,0\nb,0,1\n")
    notes = check_data(root, progress=False, include_notes=True)
    assert sorted((Path(p.path).name, p.problem, p.note) for p in notes) == [
        ("b.png", "missing mask", True),
        ("c.png", "image without a label", True),
    ]
    assert check_data(root, progress=False) == []  # notes, not problems
    assert len(ImageFolder(root, img_size=8, cache_dir=False)) == 3  # and the images are used

    monkeypatch.chdir(tmp_path)
    assert main(["check-data", "--data-root", str(root)]) == 0
    printed = capsys.readouterr().out
    assert "note: image without a label" in printed and "not in labels.csv; used without class labels" in printed
    assert "note: missing mask" in printed and "b[_mask|_segmentation].<ext>" in printed
    assert "no problems, 2 note(s); --out FILE writes them to a CSV file" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data"]  # no check-data.csv here
    assert main(["check-data", "--data-root", str(root), "--out", str(tmp_path / "report.csv")]) == 0
    assert f"report: {tmp_path / 'report.csv'}" in capsys.readouterr().out
    assert sorted(r["problem"] for r in _report_rows(tmp_path / "report.csv")) == [
        "note: image without a label",
        "note: missing mask",
    ]


def test_check_data_lists_every_problem_of_an_oct_manifest(manifest_root, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMTL_CACHE", str(tmp_path / "cache"))
    manifest = manifest_root / "manifest.csv"
    lines = manifest.read_text().splitlines()
    first_duke = lines[1].split(",")
    conflicting = ",".join([*first_duke[:-2], str(1 - int(first_duke[-2])), first_duke[-1]])
    extra = [
        "duke,dx,sx,Spectralis,../outside.png,,0/255,20,30,,,,1,0",  # 13 leaves the folder
        "duke,dy,sy,Spectralis,images/absent.png,,0/255,20,30,,,,1,0",  # 14 no such image
        "duke,dz,sz,Spectralis,images/d1_0.png,,0/255,20,30,,,,nan,0",  # 15 not finite
        conflicting,  # 16 the first duke case again with the other label
        "duke,dw,sw,Spectralis,images/d1_1.png,masks/absent.png,0/255,20,30,,,,0,0",  # 17 no such mask
    ]
    manifest.write_text("\n".join([*lines, *extra]) + "\n")
    expected = {
        (13, "path leaves the folder"),
        (14, "label without an image"),
        (15, "label value"),
        (16, "conflicting labels"),
        (17, "missing mask"),
    }
    problems = check_data(manifest_root, "all", kind="oct", progress=False)
    assert _lines(problems, "manifest.csv") == expected
    details = {p.path.rpartition(":")[2]: p.detail for p in problems}
    assert "duke/dy has no image images/absent.png in" in details["14"]
    assert details["15"] == "labels must be 0 or 1 (or empty: unknown), got has_fluid=nan for duke/dz"
    with pytest.raises(ValueError, match=r"manifest.csv:13: path '../outside.png' leaves the data folder .*4 more"):
        OCTManifest(manifest_root, "all", subset="duke", img_size=8, cache_dir=False)


def test_check_data_names_every_bad_retouch_volume(retouch_root, write_volume, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMTL_CACHE", str(tmp_path / "cache"))
    bad = np.full((4, 32, 40), 7, np.uint8)  # labels outside 0..3
    for case in ("TRAIN001", "TRAIN049"):
        folder = next(retouch_root.glob(f"*/{case}"))
        write_volume(folder, bad, "reference")
    problems = check_data(retouch_root, "all", kind="retouch", progress=False)
    assert sorted((Path(p.path).name, p.problem) for p in problems) == [
        ("TRAIN001", "unreadable volume"),
        ("TRAIN049", "unreadable volume"),
    ]
    assert all("labels outside 0..3" in p.detail for p in problems)
    with pytest.raises(ValueError, match="TRAIN001.*holds labels outside 0..3"):
        Retouch(retouch_root, "all", img_size=16, cache_dir=False)


def test_an_unknown_kind_is_a_usage_error_not_a_finding(tmp_path):
    root = write_isic_split(tmp_path / "isic", "Training", n=2)
    with pytest.raises(ValueError, match="unknown dataset kind 'isic'; valid kinds: isic2017"):
        check_data(root, kind="isic", progress=False)
