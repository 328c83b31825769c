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


def test_run_dir_names_every_file_of_a_run(tmp_path):
    from fastmtl.checkpoint.rundir import RunDir
    from fastmtl.engine.train.job import train
    from tests.engine.test_train import tiny_config

    run_dir = RunDir(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="holds neither best.safetensors nor last.safetensors"):
        run_dir.selected()
    train(tiny_config(epochs=1, max_steps_per_epoch=2), None, run_dir.path)
    written = {p.name for p in run_dir.path.iterdir()}
    named = [run_dir.marker, run_dir.config_json, run_dir.config_toml, run_dir.split, run_dir.log_jsonl,
             run_dir.log_csv, run_dir.curves, run_dir.best_weights, *set_files(run_dir.last)]  # fmt: skip
    assert {p.name for p in named} <= written
    assert run_dir.selected() == (run_dir.best_weights, "best") and run_dir.has_training_state()
    assert sorted(run_dir.training_state()) == sorted(set_files(run_dir.last)) and run_dir.held()
    for path in run_dir.training_state():
        path.unlink()
    assert not run_dir.held() and not run_dir.has_training_state() and run_dir.best_weights.is_file()


def test_a_run_saved_with_the_flat_config_resumes(tmp_path):
    """A sidecar written before the config had sections holds the flat keys: they are read through FLAT_KEYS."""
    from fastmtl.checkpoint.rundir import RunDir
    from fastmtl.engine.train.config import FLAT_KEYS
    from fastmtl.engine.train.job import train
    from tests.engine.test_train import tiny_config

    config = tiny_config(epochs=2, max_steps_per_epoch=2, checkpoint_every_steps=1)
    run_dir = RunDir(tmp_path / "run")
    train(config.replace(stop_after_steps=3), None, run_dir.path)
    sidecar = set_files(run_dir.last)[2]

    def flatten(lr_change: dict) -> None:  # the set record hashes the tensor files, not the sidecar
        data = json.loads(sidecar.read_text())
        grouped = data["train_config"]
        flat = {key: grouped[field.split(".")[0]][field.split(".")[1]] for key, field in FLAT_KEYS.items()}
        sidecar.write_text(json.dumps({**data, "train_config": {**flat, **lr_change}}))

    flatten({})
    assert train(config, None, run_dir.path, resume=True)["global_step"] == 4
    flatten({"lr": 0.5})
    with pytest.raises(ValueError, match=r"differs from the saved run in \['optim.lr'\]"):
        train(config, None, run_dir.path, resume=True)
