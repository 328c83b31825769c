"""Special files: a FIFO or a dangling symbolic link where a command expects a file is checked before anything
opens it (a FIFO would block the reader forever) and reported by name: predict lists it in ``failures.csv``,
train stops naming it (or leaves it out with ``--skip-bad``), and the text and checkpoint readers refuse it with
one line."""

from __future__ import annotations

import csv
import json
import os
import signal

import pytest

from fastmtl.cli import main
from fastmtl.engine.predict.job import predict
from tests.engine.conftest import write_isic_split
from tests.test_cli import TINY, _error, _tiny_toml

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")


@pytest.fixture(autouse=True)
def _no_hang():
    """A reader that opens a FIFO blocks forever: fail the test after a minute instead."""

    def hung(signum, frame):
        raise TimeoutError("blocked for 60 s: something opened a FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_predict_reports_a_dangling_link_and_a_fifo_in_failures_csv(tmp_path, tiny_checkpoint, image_files):
    folder = tmp_path / "images"
    os.symlink(tmp_path / "deleted.png", folder / "gone.png")
    os.mkfifo(folder / "pipe.jpg")
    summary = predict(tiny_checkpoint(img_size=32), folder, tmp_path / "out", num_workers=0)
    assert summary.n_images == len(image_files)
    with open(tmp_path / "out" / "failures.csv", newline="") as file:
        reasons = {os.path.basename(row["path"]): row["reason"] for row in csv.DictReader(file)}
    assert reasons == {
        "gone.png": f"a dangling symbolic link (to {tmp_path / 'deleted.png'})",
        "pipe.jpg": "a FIFO (named pipe), not a regular file",
    }


def test_train_names_a_fifo_among_its_images_instead_of_hanging(tmp_path, capsys):
    root = write_isic_split(tmp_path / "isic", "Training", n=8)
    fifo = root / "ISIC-2017_Training_Data" / "ISIC_0000003.jpg"
    fifo.unlink()
    os.mkfifo(fifo)
    args = ["train", "--config", str(_tiny_toml(tmp_path)), "--data-root", str(root), "--out", str(tmp_path / "run"),
            "--set", "data=auto", "--set", "data_options={}", "--set", "val_fraction=0.25", *TINY,
            "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "epochs=1"]  # fmt: skip
    assert main(args) == 2
    err = _error(capsys)
    assert "ISIC_0000003.jpg: unreadable image (a FIFO (named pipe), not a regular file)" in err
    assert main([*args, "--skip-bad"]) == 0
    skipped = json.loads((tmp_path / "run" / "split.json").read_text())["skipped"]
    assert [s["id"] for s in skipped] == ["ISIC_0000003"]


def test_folder_data_keeps_a_dangling_image_link_for_the_screen_to_name(tmp_path):
    from fastmtl.data.folder import _index_files

    (tmp_path / "a.png").write_bytes(b"")
    os.symlink(tmp_path / "nowhere.png", tmp_path / "b.png")
    (tmp_path / "sub.png").mkdir()
    assert sorted(_index_files(tmp_path)) == ["a", "b"]


@pytest.mark.parametrize("kind", ["fifo", "dangling"])
def test_text_and_checkpoint_readers_refuse_special_files_by_name(tmp_path, capsys, kind):
    def special(path):
        if kind == "fifo":
            os.mkfifo(path)
        else:
            os.symlink(tmp_path / "missing-target", path)
        return path

    found = "a FIFO (named pipe), not a regular file" if kind == "fifo" else "a dangling symbolic link"
    config = special(tmp_path / "config.toml")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert f"config file {config} is {found}" in _error(capsys)

    checkpoint = special(tmp_path / "model.safetensors")
    (tmp_path / "in.png").write_bytes(b"")
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "in.png"),
                 "--out", str(tmp_path / "out")]) == 2  # fmt: skip
    assert f"checkpoint {checkpoint} is {found}" in _error(capsys)

    root = write_isic_split(tmp_path / "isic", "Training", n=3)
    table = root / "ISIC-2017_Training_Part3_GroundTruth.csv"
    table.unlink()
    special(table)
    assert main(["check-data", "--data-root", str(root), "--out", str(tmp_path / "report.csv")]) == 2
    printed = capsys.readouterr()
    assert f"label table {table} is {found}" in printed.out and "1 problem(s)" in printed.err


def test_a_trunk_weights_fifo_is_refused_by_name(tmp_path):
    from fastmtl.weights import read_state_dict

    os.mkfifo(tmp_path / "resnet34.safetensors")
    with pytest.raises(ValueError, match=r"weights file .*resnet34.safetensors is a FIFO \(named pipe\)"):
        read_state_dict(tmp_path / "resnet34.safetensors")
    with pytest.raises(FileNotFoundError, match=r"weights file .*absent.pth does not exist"):
        read_state_dict(tmp_path / "absent.pth")
