"""A full disk: training's checkpoint save and prediction's mask, overlay and CSV writers that run out of space end
with one ``fastmtl: error:`` line naming the folder, what was being written and the free space; the last complete
checkpoint set stays resumable, no partial file is left, and ``probabilities.csv`` lists exactly the images whose
masks were written.

The full disk is simulated in-process without root: the library call that writes the bytes (safetensors'
``save_file``, PIL's ``Image.save``) raises the error it raises on a full disk (``SafetensorError`` quoting
``os error 28``, ``OSError(ENOSPC)``) after writing part of the file, so fastmtl's own handling is what runs.
"""

from __future__ import annotations

import csv
import errno
import json
import re

import pytest
from PIL import Image
from safetensors import SafetensorError

import fastmtl.checkpoint.store as checkpoint_module
import fastmtl.engine.predict.writer as writer_module
from fastmtl.checkpoint.sets import verify
from fastmtl.cli import main
from fastmtl.files import DiskFullError, atomic_write_json
from tests.test_cli import TINY, _error, _tiny_toml

_REAL_SAVE_FILE = checkpoint_module.save_file
_REAL_IMAGE_SAVE = Image.Image.save


def _full_after(monkeypatch, saves_allowed: int, name_prefix: str) -> None:
    """safetensors' save_file writes ``saves_allowed`` files whose temporary starts with ``name_prefix``, then
    writes half a file and fails as it does on a full disk."""
    count = {"n": 0}

    def save_file(tensors, path, metadata=None):
        if path.rsplit("/", 1)[-1].startswith(name_prefix):
            count["n"] += 1
            if count["n"] > saves_allowed:
                with open(path, "wb") as file:
                    file.write(b"\0" * 1000)
                raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return _REAL_SAVE_FILE(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint_module, "save_file", save_file)


def _last_error(capsys) -> str:
    """The one error line that ends a command's stderr (predict logs its path before it)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("fastmtl: error: ") == 1
    line = err.splitlines()[-1]
    assert line.startswith("fastmtl: error: ")
    return line


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or ".prev." in p.name)


def test_training_out_of_space_keeps_the_last_checkpoint_and_resumes(tmp_path, capsys, monkeypatch):
    out, config = tmp_path / "run", _tiny_toml(tmp_path, epochs=2)
    _full_after(monkeypatch, saves_allowed=1, name_prefix=".last.safetensors.")  # epoch 1's set, then full
    assert main(["train", "--config", str(config), "--out", str(out), *TINY]) == 2
    line = _error(capsys)
    assert f"no space left in {out} while writing the checkpoint last.*" in line
    assert re.search(r"\(\d+(\.\d)? (bytes|KB|MB|GB) free\)", line) and "untouched" in line and "--resume" in line
    assert _leftovers(out) == []  # the failed save's temporaries are gone, nothing half-written replaced
    assert verify(out / "last") is None
    assert json.loads((out / "last.json").read_text())["state"]["epoch"] == 1

    monkeypatch.setattr(checkpoint_module, "save_file", _REAL_SAVE_FILE)  # space freed
    assert main(["train", "--config", str(config), "--out", str(out), "--resume", *TINY]) == 0
    assert json.loads((out / "last.json").read_text())["state"]["epoch"] == 2


def test_training_out_of_space_at_the_first_checkpoint_says_nothing_is_saved(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _full_after(monkeypatch, saves_allowed=0, name_prefix=".best.safetensors.")
    assert main(["train", "--config", str(_tiny_toml(tmp_path)), "--out", str(out), *TINY]) == 2
    line = _error(capsys)
    assert f"no space left in {out} while writing the checkpoint best.safetensors" in line
    assert "no best.safetensors was written" in line
    assert not (out / "best.safetensors").exists() and _leftovers(out) == []


def test_a_json_writer_out_of_space_names_the_file_and_removes_its_temporary(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("fastmtl.files.os.fsync", no_space)
    with pytest.raises(DiskFullError, match=rf"no space left in {tmp_path} while writing split.json \(.* free\)"):
        atomic_write_json(tmp_path / "split.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def _image_save_full_after(monkeypatch, allowed: int) -> None:
    count = {"n": 0}

    def save(self, fp, *args, **kwargs):
        count["n"] += 1
        if count["n"] > allowed:
            with open(fp, "wb") as file:
                file.write(b"\x89PNG partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return _REAL_IMAGE_SAVE(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)


@pytest.mark.parametrize("overlays", [False, True])
def test_predict_out_of_space_lists_exactly_the_masks_written(
    tmp_path, capsys, monkeypatch, tiny_checkpoint, image_files, overlays
):
    out, checkpoint = tmp_path / "out", tiny_checkpoint(img_size=32)
    _image_save_full_after(monkeypatch, allowed=3)  # masks only: 3 images; with overlays: 1 image + 1 mask
    args = ["predict", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "images"), "--out", str(out)]
    assert main([*args, "--batch-size", "2", "--workers", "0", *(["--overlays"] if overlays else [])]) == 2
    line = _last_error(capsys)
    assert f"no space left in {out / 'masks' if not overlays else out / 'overlays'} while writing the" in line
    written = 1 if overlays else 3
    assert f"lists the {written} image(s) whose masks were written" in line and "free space" in line
    with open(out / "probabilities.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    masks = sorted(p.name for p in (out / "masks").iterdir())
    assert sorted(row["mask"] for row in rows) == masks and len(masks) == written
    for folder in ("masks", "overlays"):
        if (out / folder).is_dir():
            assert [p.name for p in (out / folder).iterdir() if not p.name.endswith(".png")] == []
    if overlays:
        assert sorted(p.name for p in (out / "overlays").iterdir()) == masks


def test_predict_csv_out_of_space_names_the_masks_left(tmp_path, capsys, monkeypatch, tiny_checkpoint, image_files):
    out, checkpoint = tmp_path / "out", tiny_checkpoint(img_size=32)
    real = writer_module.atomic_write_bytes

    def full_for_csv(path, data, **kwargs):
        if path.name == "probabilities.csv":
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr("fastmtl.files.os.fsync", _raise_enospc)
                return real(path, data, **kwargs)
        return real(path, data, **kwargs)

    monkeypatch.setattr(writer_module, "atomic_write_bytes", full_for_csv)
    args = ["predict", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "images"), "--out", str(out)]
    assert main([*args, "--workers", "0"]) == 2
    line = _last_error(capsys)
    assert f"no space left in {out} while writing probabilities.csv" in line
    assert f"the masks of {len(image_files)} image(s) are in {out / 'masks'} but no CSV lists them" in line
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


def _raise_enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_export_out_of_space_leaves_no_partial_package(tmp_path, capsys, monkeypatch, tiny_checkpoint):
    import torch._inductor

    def full(program, package_path, inductor_configs=None):
        with open(package_path, "wb") as file:
            file.write(b"PK partial package")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", full)
    out = tmp_path / "exports" / "model.pt2"
    out.parent.mkdir()
    assert main(["export", "--checkpoint", str(tiny_checkpoint(img_size=32)), "--out", str(out)]) == 2
    line = _last_error(capsys)
    assert f"no space left in {out.parent} while writing the exported model model.pt2" in line
    assert list(out.parent.iterdir()) == []  # no partial package, no temporary folder, no lock


def test_predict_makes_room_for_its_csv_on_a_disk_too_full_for_it(tmp_path, capsys, monkeypatch, tiny_checkpoint,
                                                                   image_files):  # fmt: skip
    out, checkpoint = tmp_path / "out", tiny_checkpoint(img_size=32)
    _image_save_full_after(monkeypatch, allowed=4)
    real, fails = writer_module.atomic_write_bytes, {"csv": 1}

    def full_once_for_csv(path, data, **kwargs):  # the first try of the CSV finds no space either
        if path.name == "probabilities.csv" and fails["csv"]:
            fails["csv"] -= 1
            _raise_enospc()
        return real(path, data, **kwargs)

    monkeypatch.setattr(writer_module, "atomic_write_bytes", full_once_for_csv)
    args = ["predict", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "images"), "--out", str(out)]
    assert main([*args, "--batch-size", "2", "--workers", "0"]) == 2
    line = _last_error(capsys)
    assert re.search(r"lists the (\d) image\(s\) whose masks were written \((\d) of the 4 masks removed", line)
    with open(out / "probabilities.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert 0 < len(rows) < 4 and sorted(r["mask"] for r in rows) == sorted(p.name for p in (out / "masks").iterdir())
