"""``fastmtl demo`` says what it trains on, keeps only what a user needs, and its checkpoint warns in predict/eval."""

from __future__ import annotations

import pytest

from fastmtl.checkpoint.meta import SYNTHETIC_WARNING, trained_on_synthetic, warn_if_synthetic
from fastmtl.cli import main
from fastmtl.engine.demo import disk_usage
from tests.engine.test_train import tiny_config  # noqa: F401  (registers tiny_mtl_test)

TINY = ["--set", "model=tiny_mtl_test", "--set", "img_size=32", "--set", "num_workers=0", "--set", "progress=false"]


def test_demo_prints_banner_and_disk_use_keeps_no_optimizer_state_and_its_checkpoint_warns(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu", *TINY, "--set", "data_options.n=16"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert printed.index("training on SYNTHETIC lesions") < printed.index("demo done")  # the banner comes first
    assert "--data-root DIR" in printed
    assert SYNTHETIC_WARNING not in captured.err  # the banner said it; evaluate and predict stay quiet in the demo
    megabytes = next(line for line in printed.splitlines() if "disk use:" in line).split()[2]
    assert float(megabytes.replace(",", "")) == pytest.approx(disk_usage(out) / 1e6, abs=0.05)
    assert "training state (last.*) removed" in printed and "wall time:" in printed
    train = out / "train"
    assert (train / "best.safetensors").is_file()
    assert not [p.name for p in train.iterdir() if "last." in p.name]  # no optimizer / resume state, no temporaries

    best = train / "best.safetensors"
    assert main(["predict", "--checkpoint", str(best), "--input", str(out / "inputs"), "--out",
                 str(tmp_path / "pred"), "--workers", "0", "--device", "cpu"]) == 0  # fmt: skip
    assert f"fastmtl: warning: {SYNTHETIC_WARNING}" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(best), "--split", "validation", "--out", str(tmp_path / "eval")]) == 0
    assert f"fastmtl: warning: {SYNTHETIC_WARNING}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("meta", "synthetic"),
    [
        ({"data_kind": "synthetic"}, True),
        ({"data_kind": "isic", "train_config": {"data": "auto"}}, False),
        ({"train_config": {"data": "synthetic"}}, True),  # no data_kind: the stored training config decides
        ({"train_config": {"data": {"kind": "synthetic"}}}, True),  # ... grouped
        ({"train_config": {"data": {"kind": "oct"}}}, False),
        ({"train_config": {"data": "folder"}}, False),
        ({}, False),  # an old or foreign checkpoint: nothing to warn about
    ],
)
def test_synthetic_flag_is_read_from_checkpoint_metadata(meta, synthetic, capsys):
    assert trained_on_synthetic(meta) is synthetic
    assert warn_if_synthetic(meta, "model.safetensors") is synthetic
    err = capsys.readouterr().err
    assert (SYNTHETIC_WARNING in err) is synthetic
    if synthetic:
        assert err.startswith("fastmtl: warning: ") and "model.safetensors" in err


def test_disk_usage_counts_files_in_subfolders(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x.bin").write_bytes(b"0" * 100)
    (tmp_path / "a" / "b" / "y.bin").write_bytes(b"0" * 23)
    assert disk_usage(tmp_path) == 123


def test_time_boxed_demo_keeps_its_training_state_and_resume_finishes_it(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--device", "cpu", *TINY, "--set", "data_options.n=16"]
    assert main([*args, "--set", "time_limit_min=0.00001"]) == 0
    printed = capsys.readouterr().out
    assert "stopped at its time limit" in printed and "--resume" in printed
    assert (out / "train" / "last.json").is_file() and not (out / "eval").exists()  # resumable; nothing evaluated

    assert main([*args, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "demo done: " in printed and (out / "eval" / "metrics.json").is_file()
    assert not [p.name for p in (out / "train").iterdir() if "last." in p.name]
