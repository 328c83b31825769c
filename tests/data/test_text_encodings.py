"""Names and text that are not UTF-8: label tables saved by Excel (byte-order mark, CRLF), Latin-1 / Windows-1252
CSV and TOML files are read; text in no encoding read here is refused naming the file and the byte; a file name
whose bytes are not UTF-8 is kept: tests/engine/test_output_ids.py."""

from __future__ import annotations

import numpy as np
import pytest

from fastmtl.cli import main
from fastmtl.data import ISIC2017
from fastmtl.data.folder import read_label_table
from fastmtl.engine.train.config_file import load_config
from fastmtl.files import read_text
from tests.engine.conftest import write_isic_split


def test_an_excel_label_table_with_bom_and_crlf_is_read(tmp_path):
    root = write_isic_split(tmp_path / "isic", "Training", n=3)
    table = root / "ISIC-2017_Training_Part3_GroundTruth.csv"
    plain = ISIC2017(root, "training", img_size=32, cache_dir=False)
    lines = table.read_text().splitlines()
    table.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")  # what Excel's "CSV UTF-8" saves
    excel = ISIC2017(root, "training", img_size=32, cache_dir=False)
    assert excel.ids == plain.ids and np.array_equal(excel.labels, plain.labels)
    table.write_bytes("\r\n".join(lines).encode("utf-16"))  # Excel's "Unicode text"
    assert ISIC2017(root, "training", img_size=32, cache_dir=False).ids == plain.ids


def test_latin1_and_cp1252_text_is_read_and_other_bytes_are_refused_by_name(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_bytes("id,caf\xe9,na\xefve\r\na,1,0\r\n".encode("latin-1"))
    assert read_label_table(labels)[0] == ("caf\xe9", "na\xefve")
    labels.write_bytes("id,\u201cquoted\u201d\na,1\n".encode("cp1252"))  # curly quotes: bytes 0x93 / 0x94
    assert read_label_table(labels)[0] == ("\u201cquoted\u201d",)
    labels.write_bytes(b"id,x\x81y\na,1\n")  # 0x81: no character in Windows-1252, not UTF-8 either
    with pytest.raises(ValueError, match=rf"label table {labels} is neither UTF-8 \(byte 0x81 on line 1, at offset 4"):
        read_label_table(labels)
    with pytest.raises(FileNotFoundError, match="label table .*absent.csv does not exist"):
        read_text(tmp_path / "absent.csv", "label table")


def test_a_latin1_toml_config_loads(tmp_path):
    config = tmp_path / "run.toml"
    config.write_bytes('# r\xe9glages du mod\xe8le\r\nepochs = 3\r\nmodel = "unet_resnet34_mtl"\r\n'.encode("latin-1"))
    assert load_config(config).optim.epochs == 3


def test_a_toml_config_in_no_known_encoding_is_refused_naming_the_file(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_bytes(b"epochs = 3 # \x8f\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"config file {config} is neither UTF-8 (byte 0x8f on line 1, at offset 13) nor Windows-1252" in err


def test_check_data_and_folder_locks_keep_names_that_are_not_utf8(tmp_path, capsys, monkeypatch):
    import sys

    from fastmtl.files import exclusive_folder

    monkeypatch.setenv("FASTMTL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "caf\udce9"  # a folder name in Latin-1 bytes
    (root / "images").mkdir(parents=True)
    (root / "images" / "\udce9t\udce9.png").write_bytes(b"not an image")
    report = tmp_path / "report.csv"
    assert main(["check-data", "--data-root", str(root), "--kind", "folder", "--out", str(report)]) == 2
    text = report.read_bytes().decode("utf-8")  # the report stays valid UTF-8
    assert "\\udce9t\\udce9.png" in text and "unreadable image" in text
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["fastmtl", "predict", "--input", str(root)])
    with exclusive_folder(tmp_path / "out", "predict"):  # the lock names the command, escaped
        assert "caf\\udce9" in (tmp_path / "out" / ".fastmtl.lock").read_text()
