"""The ``fastmtl`` command line through ``main([...])``: train/eval/predict/info/demo and one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from fastmtl.cli import main
from fastmtl.engine.train.config_file import load_config, preset_names
from tests.engine.test_train import tiny_config  # registers tiny_mtl_test

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "model=tiny_mtl_test", "--set", "img_size=32", "--set", "num_workers=0", "--set", "progress=false"]


def _tiny_toml(tmp_path: Path, **changes) -> Path:
    from fastmtl.engine.train.config_file import to_toml

    path = tmp_path / "tiny.toml"
    path.write_text(to_toml(tiny_config(max_steps_per_epoch=2, **changes)))
    return path


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastmtl: error: ") and "Traceback" not in err
    return err


def test_train_with_overrides_writes_run_and_resolved_config(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--config", str(_tiny_toml(tmp_path)), "--out", str(out), "--set", "epochs=1",
                 "--set", "data_options.n=12", "--set", "betas=[0.8, 0.9]", "--device", "cpu"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "best checkpoint:" in printed and str(out / "best.safetensors") in printed
    saved = json.loads((out / "config.json").read_text())
    assert saved["optim"]["epochs"] == 1 and saved["data"]["options"] == {"n": 12}
    assert saved["optim"]["betas"] == [0.8, 0.9] and saved["model"]["img_size"] == 32
    assert load_config(out / "config.toml") == load_config(_tiny_toml(tmp_path), ["epochs=1", "data_options.n=12",
                                                                                 "betas=[0.8, 0.9]"])  # fmt: skip
    assert len((out / "log.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "nope=1"], r"unknown key 'nope'; valid keys: model, model_options"),
        (["--set", "epochs=abc"], r"config optim.epochs expects int, got 'abc'"),
        (["--set", "model.img_size=40"], r"config model.img_size must be a multiple of 16 from 32 up to 8192, got 40"),
        (["--set", "lr"], r"--set expects key=value, got 'lr'"),
        (["--set", "epochs.x=1"], r"optim.epochs is not a table"),
        (["--set", "amp=fp8"], r"amp='fp8' is not valid; expected one of auto, bf16, fp16, off"),
        (["--set", "model=no_such_model"], r"unknown model 'no_such_model'; registered models: "),
        (["--set", "lr=1e30"], r"non-finite training loss at epoch \d+ step \d+ \(global step \d+\): loss="),
        (["--data-root", "/no/such/folder", "--set", "data=auto"], r"data folder /no/such/folder does not exist"),
    ],
)
def test_train_errors_are_one_line_with_exit_code_2(tmp_path, capsys, args, expected):
    config = _tiny_toml(tmp_path, epochs=3)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), *args]) == 2
    assert re.search(expected, _error(capsys))


def test_missing_config_and_bad_toml(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "absent.toml")]) == 2
    assert f"config file {tmp_path / 'absent.toml'} not found; give a .toml file or a preset" in _error(capsys)
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert f"config file {bad} is not valid TOML" in _error(capsys)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("epochs = 3\nlearning_rate = 0.1\n")
    assert main(["train", "--config", str(unknown)]) == 2
    assert f"{unknown}: unknown key(s) ['learning_rate']" in _error(capsys)


def test_isic_csv_without_columns_is_reported(tmp_path, capsys):
    root = tmp_path / "isic"
    (root / "ISIC-2017_Training_Data").mkdir(parents=True)
    (root / "ISIC-2017_Training_Part3_GroundTruth.csv").write_text("image_id,diagnosis\nISIC_0000000,1\n")
    assert main(["train", "--config", str(_tiny_toml(tmp_path)), "--data-root", str(root), "--set", "data=auto",
                 "--set", "data_options={}", "--out", str(tmp_path / "run")]) == 2  # fmt: skip
    assert "lacks column(s) ['melanoma', 'seborrheic_keratosis']" in _error(capsys)


def test_resume_and_checkpoint_errors(tmp_path, capsys):
    assert main(["train", "--config", str(_tiny_toml(tmp_path)), "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "nothing to resume in" in _error(capsys)
    not_a_checkpoint = tmp_path / "model.safetensors"
    not_a_checkpoint.write_bytes(b"garbage")
    assert main(["eval", "--checkpoint", str(not_a_checkpoint), "--out", str(tmp_path / "eval")]) == 2
    assert f"checkpoint {not_a_checkpoint} is not a readable safetensors file" in _error(capsys)
    image = tmp_path / "images" / "one.png"
    image.parent.mkdir()
    Image.new("RGB", (40, 30), (200, 150, 120)).save(image)
    assert main(["predict", "--checkpoint", str(tmp_path / "absent.safetensors"), "--input", str(image.parent),
                 "--output", str(tmp_path / "pred"), "--workers", "0"]) == 2  # fmt: skip
    assert "absent.safetensors does not exist" in _error(capsys)


def test_demo_then_eval_and_predict_on_its_checkpoint(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu", *TINY, "--set", "data_options.n=16"]) == 0
    printed = capsys.readouterr().out
    for line in ("checkpoint:", "learning curves:", "evaluation:", "predictions:"):
        assert line in printed
    assert (out / "train" / "curves.png").is_file() and (out / "eval" / "metrics.json").is_file()
    assert len(list((out / "predictions" / "masks").glob("*.png"))) == 6
    best = out / "train" / "best.safetensors"

    again = next(line for line in printed.splitlines() if "same evaluation:" in line).split(":", 1)[1].split()
    assert again[:2] == ["fastmtl", "eval"] and main(again[1:]) == 0  # the command the demo prints, as printed
    demo, fresh = (json.loads((d / "metrics.json").read_text()) for d in (out / "eval", out / "eval-again"))
    assert fresh["metrics"]["n_images"] == demo["metrics"]["n_images"] == 64  # the same test images ...
    assert fresh["metrics"] == pytest.approx(demo["metrics"], rel=1e-6, abs=1e-9)  # ... the same numbers

    assert main(["eval", "--checkpoint", str(best), "--split", "validation", "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["split"] == "val" and report["metrics"]["n_images"] == 64  # synthetic val split default size
    assert main(["predict", "--checkpoint", str(best), "--input", str(out / "inputs"), "--output",
                 str(tmp_path / "pred"), "--workers", "0", "--overlays", "--device", "cpu"]) == 0  # fmt: skip
    assert len(list((tmp_path / "pred" / "overlays").glob("*.png"))) == 6


def test_info_lists_models_cpu_paths_and_the_cache(capsys, tmp_path, monkeypatch, cpu_kind):
    monkeypatch.setenv("FASTMTL_CACHE", str(tmp_path))
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "m.onnx").write_bytes(b"x" * 30_000_000)
    assert main(["info"]) == 0
    printed = capsys.readouterr().out
    assert "torch" in printed and "cpu" in printed and "onnxruntime" in printed and "  openvino     " in printed
    assert "resformer_mtl " in printed and "56,347,211" in printed  # SPEC section 7, parallel fusion + DFE at 224
    assert f"cache        {tmp_path} (ONNX files: 0.03 GB, at most 2 GB)" in printed
    assert f"CPU inference paths ({cpu_kind.name}, {cpu_kind.kind}; simulated by FASTMTL_CPU=" in printed
    assert ("  bf16         native (oneDNN)" in printed) == cpu_kind.bf16
    assert ("  int8         VNNI: 8-bit weights" in printed) == cpu_kind.int8_vnni
    assert ("  int8         no VNNI: 7-bit weights" in printed) != cpu_kind.int8_vnni
    monkeypatch.setenv("FASTMTL_ONNX_CACHE_GB", "lots")
    assert main(["info"]) == 0  # a malformed bound is shown, not raised
    assert "FASTMTL_ONNX_CACHE_GB='lots': expected a size in gigabytes" in capsys.readouterr().out


def test_shipped_configs_load_by_preset_name_and_by_path():
    for path in sorted((REPO / "fastmtl" / "configs").glob("*.toml")):
        assert load_config(path) == load_config(path.stem)
    assert set(preset_names()) >= {"quick", "demo", "isic2017_paper"}
    paper = load_config("isic2017_paper")
    assert (paper.model.img_size, paper.optim.epochs, paper.optim.batch_size, paper.optim.lr, paper.optim.seed) == (
        224, 150, 8, 7e-5, 1234)  # fmt: skip


def test_module_entry_point_shows_help():
    done = subprocess.run([sys.executable, "-m", "fastmtl.cli", "train", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--resume" in done.stdout and "--set KEY=VALUE" in done.stdout


def test_threads_option_sets_torch_threads_and_rejects_nonsense(capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["--threads", "1", "info"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert main(["--threads", "0", "info"]) == 2
    assert "--threads must be between 1 and" in capsys.readouterr().err


def _layout(root: Path, kind: str) -> Path | None:
    """Just enough of each kind's layout for ``detect_kind`` to recognise it."""
    marker = {"isic2017": "ISIC-2017_Training_Data/", "retouch": "TRAIN001/oct.mhd", "oct": "manifest.csv",
              "folder": "images/", "synthetic": None}[kind]  # fmt: skip
    if marker is None:
        return None
    path = root / marker
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir() if marker.endswith("/") else path.write_text("")
    return root


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("isic2017", {"validation": "validation", "val": "validation", "train": "training", "test": "test"}),
        ("retouch", {"validation": "val", "val": "val", "training": "train", "test": "test"}),
        ("oct", {"validation": "val", "val": "val", "training": "train", "test": "test"}),
        ("folder", {"validation": "val", "val": "val", "training": "train", "test": "test"}),
        ("synthetic", {"validation": "val", "val": "val", "training": "train", "test": "test"}),
    ],
)
def test_eval_split_aliases_resolve_for_every_kind(tmp_path, monkeypatch, kind, expected):
    import fastmtl.engine.evaluate.job

    seen = []  # the split each call hands to the engine (a stand-in evaluate: the CLI's resolution is under test)
    monkeypatch.setattr(
        fastmtl.engine.evaluate.job, "evaluate", lambda c, r, split, o, **kw: seen.append(split) or {1: 1}
    )
    root = _layout(tmp_path / "data", kind)
    checkpoint = tmp_path / "c.safetensors"
    checkpoint.write_bytes(b"")  # the CLI checks that the file exists; the stand-in never reads it
    for split in expected:
        args = ["eval", "--checkpoint", str(checkpoint), "--split", split, "--out", str(tmp_path / "eval")]
        assert main([*args, *(["--data-root", str(root)] if root else [])]) == 0
    assert seen == list(expected.values())


def test_eval_with_an_unknown_kind_is_one_line(tmp_path, capsys):
    (tmp_path / "c.safetensors").write_bytes(b"")
    checkpoint = str(tmp_path / "c.safetensors")
    assert main(["eval", "--checkpoint", checkpoint, "--kind", "isic", "--out", str(tmp_path / "e")]) == 2
    assert "unknown dataset kind 'isic'; valid kinds: isic2017, retouch, oct, folder, synthetic" in _error(capsys)
