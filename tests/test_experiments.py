"""The experiments report builder (experiments/run.py report): tables from result JSONs, no training."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

RUN_PY = Path(__file__).resolve().parent.parent / "experiments" / "run.py"


@pytest.fixture(scope="module")
def run():
    spec = importlib.util.spec_from_file_location("experiments_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(model: str, seed: int, **metrics) -> dict:
    return {
        "experiment": "isic",
        "model": model,
        "seed": seed,
        "best_epoch": 3,
        "epochs": 5,
        "train_images": 3200,
        "train_images_per_s": 7.25,
        "wall_time_s": 600.0,
        "metrics": metrics,
        "command": f"python experiments/run.py isic --model {model} --seed {seed}",
        "git_commit": "0123456789abcdef",
        "git_dirty": False,
        "torch": "2.5.0",
    }


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "results" / "isic"
    folder.mkdir(parents=True)
    mtl = _result("resformer_mtl", 1, dsc=80.04, ji=70.0, global_dice=82.5, acc=75.0, sen=50.0, spe=80.0,
                  auc_melanoma=70.26, auc_seborrheic_keratosis=None)  # fmt: skip
    cls = _result("resnet34_cls", 1, acc=60.0, sen=40.0, spe=70.0, auc_melanoma=65.0, auc_seborrheic_keratosis=72.0)
    # Written in reverse order: the table must follow the model order, not the file names.
    (folder / "resnet34_cls-s1.json").write_text(json.dumps(cls))
    (folder / "resformer_mtl-s1.json").write_text(json.dumps(mtl))
    return tmp_path / "results"


def test_table_rows(run, results_dir):
    results = run.load_results(results_dir)
    assert [r["model"] for r in results["isic"]] == ["resformer_mtl", "resnet34_cls"]
    lines = run.build_table("isic", results["isic"]).splitlines()
    assert lines[0] == (
        "| model | seed | DSC | JI | global Dice | Acc | Sen | Spe | MEL AUC | SK AUC | best ep. | train img | img/s "
        "| wall (min) |"
    )
    assert lines[1] == "|" + "---|" * 14
    mtl = "| `resformer_mtl` | 1 | 80.0 | 70.0 | 82.5 | 75.0 | 50.0 | 80.0 | 70.3 | - | 3/5 | 3200 | 7.2 | 10.0 |"
    assert lines[2] == mtl
    assert lines[3] == "| `resnet34_cls` | 1 | - | - | - | 60.0 | 40.0 | 70.0 | 65.0 | 72.0 | 3/5 | 3200 | 7.2 | 10.0 |"
    assert len(lines) == 4


def test_write_report_replaces_only_the_generated_block(run, results_dir, tmp_path):
    markdown = tmp_path / "RESULTS.md"
    markdown.write_text(f"# Results\n\nprotocol text\n\n{run.BEGIN}\nold table\n{run.END}\n\nmore text\n")
    text = run.write_report(results_dir, markdown)
    assert text == markdown.read_text()
    assert text.startswith("# Results\n\nprotocol text\n\n" + run.BEGIN)
    assert text.endswith(run.END + "\n\nmore text\n")
    assert "old table" not in text
    assert "| `resnet34_cls` | 1 | - | - | - |" in text
    assert "python experiments/run.py isic --model resformer_mtl --seed 1" in text
    assert "Duke DME" in text and "No runs yet." in text  # the OCT section exists even without runs
    assert run.write_report(results_dir, markdown) == text  # idempotent


def test_write_report_needs_the_markers(run, results_dir, tmp_path):
    markdown = tmp_path / "RESULTS.md"
    markdown.write_text("# Results\n")
    with pytest.raises(SystemExit, match="no generated block"):
        run.write_report(results_dir, markdown)


def test_mean_row_for_several_seeds(run, results_dir):
    folder = results_dir / "isic"
    second = _result("resformer_mtl", 2, dsc=70.0, ji=60.0, global_dice=80.5, acc=65.0, sen=40.0, spe=70.0,
                     auc_melanoma=60.0, auc_seborrheic_keratosis=None)  # fmt: skip
    (folder / "resformer_mtl-s2.json").write_text(json.dumps(second))
    lines = run.build_table("isic", run.load_results(results_dir)["isic"]).splitlines()
    assert [line.split(" | ")[:2] for line in lines[2:]] == [
        ["| `resformer_mtl`", "1"],
        ["| `resformer_mtl`", "2"],
        ["| `resformer_mtl`", "mean of 2"],
        ["| `resnet34_cls`", "1"],
    ]
    assert lines[4] == "| `resformer_mtl` | mean of 2 | 75.0 | 65.0 | 81.5 | 70.0 | 45.0 | 75.0 | 65.1 | - | | | | |"
