"""The experiments runner: the report builder (tables from result JSONs), the time-boxed and the one-command paper
protocol runs on tiny CPU stand-ins, the projection."""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import report
from experiments.cli import build_parser, main
from experiments.row import canonical_command
from experiments.table import REPO


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


def test_table_rows(results_dir):
    results = report.load_results(results_dir)
    assert [r["model"] for r in results["isic"]] == ["resformer_mtl", "resnet34_cls"]
    lines = report.build_table("isic", results["isic"]).splitlines()
    assert lines[0] == (
        "| model | seed | DSC | JI | global Dice | Acc | Sen | Spe | MEL AUC | SK AUC | best ep. | train img | img/s "
        "| wall (min) |"
    )
    assert lines[1] == "|" + "---|" * 14
    mtl = "| `resformer_mtl` | 1 | 80.0 | 70.0 | 82.5 | 75.0 | 50.0 | 80.0 | 70.3 | - | 3/5 | 3200 | 7.2 | 10.0 |"
    assert lines[2] == mtl
    assert lines[3] == "| `resnet34_cls` | 1 | - | - | - | 60.0 | 40.0 | 70.0 | 65.0 | 72.0 | 3/5 | 3200 | 7.2 | 10.0 |"
    assert len(lines) == 4


def test_write_report_replaces_only_the_generated_block(results_dir, tmp_path):
    markdown = tmp_path / "RESULTS.md"
    markdown.write_text(f"# Results\n\nprotocol text\n\n{report.BEGIN}\nold table\n{report.END}\n\nmore text\n")
    text = report.write_report(results_dir, markdown)
    assert text == markdown.read_text()
    assert text.startswith("# Results\n\nprotocol text\n\n" + report.BEGIN)
    assert text.endswith(report.END + "\n\nmore text\n")
    assert "old table" not in text
    assert "| `resnet34_cls` | 1 | - | - | - |" in text
    assert "python experiments/run.py isic --model resformer_mtl --seed 1" in text
    assert "Duke DME" in text and "No runs yet." in text  # the OCT section exists even without runs
    assert "paper's protocol" in text  # so does the GPU run's, saying it has not run
    assert report.write_report(results_dir, markdown) == text  # idempotent


def test_write_report_needs_the_markers(results_dir, tmp_path):
    markdown = tmp_path / "RESULTS.md"
    markdown.write_text("# Results\n")
    with pytest.raises(SystemExit, match="no generated block"):
        report.write_report(results_dir, markdown)


def test_mean_row_for_several_seeds(results_dir):
    folder = results_dir / "isic"
    second = _result("resformer_mtl", 2, dsc=70.0, ji=60.0, global_dice=80.5, acc=65.0, sen=40.0, spe=70.0,
                     auc_melanoma=60.0, auc_seborrheic_keratosis=None)  # fmt: skip
    (folder / "resformer_mtl-s2.json").write_text(json.dumps(second))
    lines = report.build_table("isic", report.load_results(results_dir)["isic"]).splitlines()
    assert [line.split(" | ")[:2] for line in lines[2:]] == [
        ["| `resformer_mtl`", "1"],
        ["| `resformer_mtl`", "2"],
        ["| `resformer_mtl`", "mean ± sd of 2"],
        ["| `resnet34_cls`", "1"],
    ]
    # sample sd of two values a, b is |a - b| / sqrt(2): DSC 80.04 / 70.0 -> 7.1, JI 70 / 60 -> 7.1
    assert lines[4] == (
        "| `resformer_mtl` | mean ± sd of 2 | 75.0 ± 7.1 | 65.0 ± 7.1 | 81.5 ± 1.4 | 70.0 ± 7.1 | 45.0 ± 7.1 "
        "| 75.0 ± 7.1 | 65.1 ± 7.3 | - | | | | |"
    )


def test_ablations_get_a_paired_summary_and_their_own_runs_table(results_dir):
    folder = results_dir / "isic"
    for seed, ji in ((1, 66.0), (2, 58.0)):
        row = _result("resformer_mtl", seed, dsc=75.0, ji=ji, global_dice=80.0, auc_melanoma=60.0)
        row.update(variant="head1", command=f"python experiments/run.py isic --model resformer_mtl --seed {seed} "
                   "--variant head1")  # fmt: skip
        (folder / f"resformer_mtl+head1-s{seed}.json").write_text(json.dumps(row))
    second = _result("resformer_mtl", 2, dsc=70.0, ji=60.0, global_dice=80.5, auc_melanoma=60.0)
    (folder / "resformer_mtl-s2.json").write_text(json.dumps(second))
    rows = report.load_results(results_dir)["isic"]
    table = report.build_ablation_table("isic", rows).splitlines()
    assert table[0].startswith("| run | change | seeds | DSC | JI |") and table[0].endswith("| ΔJI per seed |")
    assert table[2].startswith("| `resformer_mtl` | reference") and table[2].endswith("|  |")
    # paired by seed: 66 - 70 = -4.0, 58 - 60 = -2.0
    assert table[3].startswith("| `resformer_mtl+head1` | one-level classification head (e3 only) | 1,2 | 75.0 ± 0.0 |")
    assert table[3].endswith("| -4.0 / -2.0 |") and len(table) == 4
    text = report.build_report({"isic": rows})
    models_table = text.split("Ablations of")[0]
    assert "`resformer_mtl+head1`" not in models_table and "`resnet34_cls`" in models_table
    assert "| `resformer_mtl+head1` | 2 | 75.0 | 58.0 |" in text.split("Their runs:")[1]
    assert "--variant head1" in text
    assert report.build_ablation_table("isic", [r for r in rows if r["model"] != "resformer_mtl"]) == ""


def test_canonical_command_leaves_out_output_folders():
    args = argparse.Namespace(
        exp="oct", model="unet_resnet34", seed=2, variant="alpha1", set=["epochs=3"], threads=1, data_root="",
        time_limit=None, results="/elsewhere", figures="/elsewhere", runs="/tmp/x",
    )  # fmt: skip
    assert canonical_command(args) == (
        "python experiments/run.py oct --model unet_resnet34 --seed 2 --variant alpha1 --set epochs=3 --threads 1"
    )


def test_every_recorded_command_parses_and_regenerates_itself():
    """The commands the committed result JSONs record (and docs/RESULTS.md lists under each table) are valid
    command lines of today's experiments runner, and the command it would record for them is the same text."""
    files = sorted((REPO / "experiments" / "results").glob("*/*.json"))
    commands = [json.loads(p.read_text())["command"] for p in files]
    assert commands, "no recorded commands found under experiments/results/"
    for command in commands:
        words = shlex.split(command)
        assert words[:2] == ["python", "experiments/run.py"], command
        assert canonical_command(build_parser().parse_args(words[2:])) == command


@pytest.mark.parametrize("entry", [["experiments/run.py"], ["-m", "experiments"]], ids=["script", "module"])
def test_both_entry_points_run_the_command_line(entry, results_dir, tmp_path):
    """`python experiments/run.py` (the recorded form) and `python -m experiments` (from the checkout: experiments/
    is not installed) are the same command line."""
    markdown = tmp_path / "RESULTS.md"
    markdown.write_text(f"{report.BEGIN}\n{report.END}\n")
    cmd = [sys.executable, *entry, "report", "--results", str(results_dir), "--markdown", str(markdown)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"rebuilt {markdown}" in done.stdout and "| `resformer_mtl` | 1 | 80.0 |" in markdown.read_text()


def test_time_boxed_paper_run_resumes_until_done_then_writes_its_row(tmp_path, capsys):
    """The GPU protocol runner on a tiny CPU stand-in: each command trains until its time is up, saves, and the
    same command carries on; the result JSON appears only once the run is complete."""
    small = ['data="synthetic"', "data_options={n=16}", "img_size=32", "epochs=2", "max_steps_per_epoch=2",
             "batch_size=4", 'device="cpu"', "num_workers=0", 'cache_dir="off"']  # fmt: skip
    argv = ["isic-paper", "--model", "unet_resnet34_mtl", "--seed", "3", "--data-root", str(tmp_path)]
    argv += [a for s in small for a in ("--set", s)] + ["--time-limit", "1e-9", "--threads", "1"]
    argv += ["--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--figures", str(tmp_path)]
    result = tmp_path / "results" / "isic-paper" / "unet_resnet34_mtl-s3.json"
    calls = 0
    while not result.exists():
        calls += 1
        assert calls <= 4, "the time-boxed run does not finish"
        main(argv)
    # 2 epochs of 2 steps: stop after step 1, after step 3 (step 2 ends epoch 1 and validates), finish with step 4
    assert calls == 3 and "run the same command again to continue" in capsys.readouterr().out
    row = json.loads(result.read_text())
    assert row["global_steps"] == 4 and row["epochs"] == 2 and row["time_limit_min"] == 1e-9
    assert row["wall_time_s"] > 0 and "--time-limit 1e-09" in row["command"]
    assert (tmp_path / "isic-paper-unet_resnet34_mtl-s3-examples.png").is_file()


def _paper_argv(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    small = ["img_size=32", "store_size=40", "batch_size=2", 'cache_dir="off"', 'device="cpu"']
    argv = ["isic-paper", "--model", "unet_resnet34_mtl", "--seed", "5", "--data-root", str(root), "--threads", "1"]
    argv += [a for s in small for a in ("--set", s)] + [
        "--runs",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "out"),
    ]
    return argv + list(extra)


SUMMARY_KEYS = {
    "epochs_done", "epochs_planned", "steps_done", "stopped_by_budget", "budget_min", "wall_s", "train_s",
    "epoch_s", "first_epoch_s", "images_per_epoch", "images_per_full_epoch", "train_images_per_s", "warmup_s", "val_s",
    "val_share", "epochs_per_s", "projected_150_epochs_min", "train_gflops_per_image", "achieved_tflops",
    "val_cold_s", "rate_from", "schedule", "final_lr", "partial_epoch", "epochs_done_of_paper", "status",
    "layer_paths", "selected", "selected_epoch", "metrics", "last_epoch_metrics", "eval", "files", "run_dir",
    "device", "torch", "config", "command", "git_commit",
}  # fmt: skip


def test_paper_protocol_in_one_command_trains_evaluates_and_writes_a_small_folder(tmp_path, capsys):
    from tests.engine.conftest import write_isic_split

    root = write_isic_split(tmp_path / "isic", "Training", n=14)
    write_isic_split(root, "Test_v2", n=5)
    argv = _paper_argv(root, tmp_path, "--epochs", "2", "--budget-min", "20", "--limit-images", "8",
                       "--val-every", "1", "--eval", f"{root}:test")  # fmt: skip
    main(argv)
    out = tmp_path / "out"
    files = sorted(p.name for p in out.iterdir())
    assert files == ["curves.png", "eval-isic-test.json", "log.csv", "metrics.json", "summary.json"]
    assert all(p.is_file() and p.stat().st_size < 16 * 2**20 for p in out.iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["epochs_done"] == summary["epochs_planned"] == 2 and not summary["stopped_by_budget"]
    assert summary["steps_done"] == 8 and summary["images_per_epoch"] == 8 and summary["selected"] == "best"
    assert summary["images_per_full_epoch"] == 12  # the carved training split without --limit-images
    assert summary["projected_150_epochs_min"] > 0 and summary["train_gflops_per_image"] > 0
    assert summary["layer_paths"]["step"].startswith("device step: eager")  # no compile on CPU by default
    data = summary["config"]["data"]
    assert data["input_pipeline"] == "device" and data["max_train_images"] == 8
    assert "--budget-min 20" in summary["command"]
    evaluated = json.loads((out / "eval-isic-test.json").read_text())
    assert evaluated["n_images"] == 5 and evaluated["split"] == "test" and "ji" in evaluated["metrics"]
    assert summary["eval"]["isic-test"]["ji"] == evaluated["metrics"]["ji"]
    assert json.loads((out / "metrics.json").read_text())["metrics"]["ji"] == summary["metrics"]["ji"]
    # the first validation is timed twice; the projection costs a validation at its warm time
    rows = list(csv.DictReader((out / "log.csv").open()))
    warm = float(rows[0]["validation_warm_s"])
    assert summary["val_cold_s"] == pytest.approx(float(rows[0]["validation_s"]))
    assert summary["val_s"] == pytest.approx((warm + float(rows[1]["validation_s"])) / 2)
    assert summary["compile_counters"] == {"graph_breaks": 0, "cudagraph_skips": 0}
    assert (Path(summary["run_dir"]) / "best.safetensors").is_file()  # the weights stay in the scratch folder
    printed = capsys.readouterr().out
    assert "completed: 2/2 epochs" in printed and "epochs/s" in printed and "150 epochs would take" in printed


def test_paper_protocol_stops_at_the_budget_and_says_so(tmp_path, capsys):
    from tests.engine.conftest import write_isic_split

    root = write_isic_split(tmp_path / "isic", "Training", n=10)
    main(_paper_argv(root, tmp_path, "--budget-min", "0.001", "--reserve-s", "0", "--limit-images", "4"))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["stopped_by_budget"] and summary["epochs_done"] == 0 and summary["steps_done"] == 1
    assert summary["selected"] == "last" and summary["epochs_planned"] == 150
    assert summary["partial_epoch"]["steps"] == 1 and summary["epochs_done_of_paper"] == "0 of 150 (+1 steps)"
    assert "stopped at the budget: 0/150 epochs (1 steps)" in capsys.readouterr().out


def test_budget_schedule_ends_inside_its_budget_with_the_lr_decayed_to_the_end(tmp_path, capsys):
    """--schedule budget (the default under --budget-min): the first steps are timed, the steps that fit are
    planned, and the poly schedule runs to its end over them; the run is not cut by the budget."""
    from fastmtl.engine.train.schedule import poly_lr
    from tests.engine.conftest import write_isic_split

    root = write_isic_split(tmp_path / "isic", "Training", n=14)
    budget_min, reserve_s = 0.75, 10
    main(_paper_argv(root, tmp_path, "--budget-min", str(budget_min), "--reserve-s", str(reserve_s),
                         "--val-every", "2"))  # fmt: skip
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    plan = summary["schedule"]
    assert plan["schedule"] == "budget" and plan["planned_steps"] == summary["steps_done"] > 0
    assert not summary["stopped_by_budget"] and summary["epochs_done"] < summary["epochs_planned"] == 150
    assert summary["epochs_done_of_paper"].endswith("of 150") and plan["paper_epochs"] == 150
    # Tolerance: the plan comes from timed steps on a CPU other jobs share, so a step or a validation may run
    # longer than measured; the run must still end within 25 % of its budget (the reserve is for what follows).
    assert summary["wall_s"] <= 60 * budget_min * 1.25, summary["wall_s"]
    optim = summary["config"]["optim"]
    last_lr = poly_lr(optim["lr"], plan["planned_steps"] - 1, plan["planned_steps"], optim["poly_power"])
    assert summary["final_lr"] == pytest.approx(last_lr) and last_lr < 0.2 * optim["lr"]  # decayed to the end
    assert summary["projected_150_epochs_min"] > 0 and "budget schedule:" in capsys.readouterr().out


def test_paper_protocol_writes_its_results_after_every_validation(tmp_path, monkeypatch):
    """A command killed after a validation still brings back summary.json, metrics.json and log.csv."""
    import experiments.protocol as protocol
    from tests.engine.conftest import write_isic_split

    seen = []
    real = protocol.atomic_write_json

    def spy(path, data):
        real(path, data)
        if Path(path).name == "summary.json":
            seen.append((data["status"], sorted(p.name for p in Path(path).parent.iterdir())))

    monkeypatch.setattr(protocol, "atomic_write_json", spy)
    root = write_isic_split(tmp_path / "isic", "Training", n=10)
    main(_paper_argv(root, tmp_path, "--epochs", "2", "--budget-min", "20", "--limit-images", "4",
                         "--val-every", "1", "--schedule", "epochs"))  # fmt: skip
    assert [status for status, _ in seen] == ["running: epoch 1 validated", "running: epoch 2 validated", "done"]
    assert {"summary.json", "metrics.json", "log.csv"} <= set(seen[0][1])


def test_paper_protocol_rejects_missing_folders(tmp_path):
    with pytest.raises(SystemExit, match="not found"):
        main(_paper_argv(tmp_path / "nowhere", tmp_path, "--budget-min", "1"))
    from tests.engine.conftest import write_isic_split

    root = write_isic_split(tmp_path / "isic", "Training", n=4)
    with pytest.raises(SystemExit, match=r"--eval .*missing.*not found"):
        main(_paper_argv(root, tmp_path, "--budget-min", "1", "--eval", f"{tmp_path}/missing:test"))
    # a folder without the split fails before any training, naming the folder it looked for
    with pytest.raises(
        SystemExit, match=r"--eval .*isic:validation: ISIC 2017 image folder .*Validation_Data not found"
    ):
        main(_paper_argv(root, tmp_path, "--budget-min", "1", "--eval", f"{root}:validation"))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out" / "summary.json").exists()


def test_projection_from_the_epoch_the_budget_cut():
    """No epoch completed: the cut epoch's steady rate gives the projection instead of "not measured"."""
    from experiments.projection import throughput

    costs = throughput([], 8, 1800, 5, {"steps": 40, "time_s": 20.0, "steady_images_per_s": 100.0})
    assert costs["rate_from"] == "the epoch the budget cut" and costs["train_images_per_s"] == 100.0
    assert costs["projected_150_epochs_min"] == pytest.approx(150 * 1800 / 100.0 / 60)
    assert throughput([], 8, 1800, 5, {})["projected_150_epochs_min"] is None


def test_projection_and_eval_names():
    from experiments.evaluation import parse_eval
    from experiments.projection import project_minutes, throughput

    # 150 epochs of 1800 images at 600 images/s: 450 s, + 30 s warm-up + 30 validations of 2 s = 540 s = 9 min
    assert project_minutes(1800, 600.0, 150, warmup_s=30.0, val_s=2.0, val_every=5) == pytest.approx(9.0)
    assert math.isnan(project_minutes(1800, 0.0))
    first = {"epoch": 1, "global_step": 225, "time_s": 40.0, "steady_images_per_s": 600.0}
    second = {"epoch": 2, "global_step": 450, "time_s": 3.0, "steady_images_per_s": 600.0, "validation_s": 2.0}
    history = [first, second]
    costs = throughput(history, 8, 1800, 5)
    assert costs["warmup_s"] == pytest.approx(37.0) and costs["epoch_s"] == 3.0 and costs["images_per_epoch"] == 1800
    assert costs["projected_150_epochs_min"] == pytest.approx((450 + 37 + 30 * 2.0) / 60)
    taken: set[str] = set()
    here = Path(__file__).parent
    names = [parse_eval(f"{here}:validation", taken).name, parse_eval(f"{here}:validation", taken).name]
    assert names == ["tests-validation", "tests-validation-2"] and parse_eval(str(here)).split == "test"
