"""Runs that do not match their folder: ``train --resume`` on other data (another folder, other case ids) refuses
with a line saying what differs, unless ``--resume-other-data``; ``train --out`` into a folder holding files that
fastmtl did not write (a user's notes in ``log.csv``, another tool's ``config.json``) refuses and leaves them."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from fastmtl.checkpoint.sets import set_files
from fastmtl.cli import main
from tests.engine.conftest import write_isic_split
from tests.test_cli import TINY, _error, _tiny_toml


def _args(tmp_path, root, *extra):
    return ["train", "--config", str(_tiny_toml(tmp_path)), "--data-root", str(root), "--out", str(tmp_path / "run"),
            "--set", "data=auto", "--set", "data_options={}", "--set", "val_fraction=0.25", *TINY,
            "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "epochs=1", *extra]  # fmt: skip


@pytest.fixture
def trained(tmp_path, capsys):
    root = write_isic_split(tmp_path / "isic", "Training", n=8)
    assert main(_args(tmp_path, root)) == 0
    capsys.readouterr()
    return root


def test_resume_on_another_data_folder_is_refused_unless_told(tmp_path, capsys, trained):
    other = tmp_path / "copy"
    shutil.copytree(trained, other)
    saved = (tmp_path / "run" / "split.json").read_text()
    assert main(_args(tmp_path, other, "--resume")) == 2
    line = _error(capsys)
    assert f"cannot resume {tmp_path / 'run'} on other data than it was trained on" in line
    assert f"data folder {other.resolve()} (the run's: {trained.resolve()})" in line and "--resume-other-data" in line
    assert (tmp_path / "run" / "split.json").read_text() == saved  # the run's record is left as it was
    assert main(_args(tmp_path, other, "--resume", "--resume-other-data")) == 0
    assert json.loads((tmp_path / "run" / "split.json").read_text())["data_root"] == str(other.resolve())


def test_resume_on_other_case_ids_is_refused(tmp_path, capsys, trained):
    (trained / "ISIC-2017_Training_Data" / "ISIC_0000007.jpg").unlink()
    table = trained / "ISIC-2017_Training_Part3_GroundTruth.csv"
    table.write_text("".join(line for line in table.read_text().splitlines(True) if "ISIC_0000007" not in line))
    assert main(_args(tmp_path, trained, "--resume")) == 2
    line = _error(capsys)  # one case fewer: the carved split moves other cases too
    assert re.search(r"training ids: \d+ added, \d+ missing \(e\.g\. ISIC_\d+\)", line) and "data folder" not in line


def test_resume_on_the_same_data_goes_on(tmp_path, trained):
    assert main(_args(tmp_path, trained, "--resume")) == 0


@pytest.mark.parametrize(("name", "text"), [("log.csv", "my notes, keep them\n"), ("config.json", '{"tool": "x"}')])
def test_train_refuses_a_folder_holding_files_it_did_not_write(tmp_path, capsys, name, text):
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_text(text)
    assert main(["train", "--config", str(_tiny_toml(tmp_path)), "--out", str(out), *TINY]) == 2
    assert f"{out} holds files that fastmtl train did not write ({name}); a run would overwrite them" in _error(capsys)
    assert [p.name for p in out.iterdir()] == [name] and (out / name).read_text() == text


def test_train_reuses_its_own_folder_once_the_run_is_gone(tmp_path, capsys):
    out, config = tmp_path / "run", str(_tiny_toml(tmp_path))
    assert main(["train", "--config", config, "--out", str(out), *TINY]) == 0
    for path in set_files(out / "last"):  # what the demo does once it has finished
        path.unlink()
    assert main(["train", "--config", config, "--out", str(out), *TINY]) == 0
    assert (out / "last.json").is_file()
