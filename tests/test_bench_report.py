"""The benchmark report tool on a small synthetic pytest-benchmark JSON: tables, speedups, PNGs, --compare."""

from __future__ import annotations

import copy
import json

import pytest

from bench import report
from bench.benchmarks import add_speedups, load, provider_of
from bench.render import render


def _bench(group: str, provider: str, median: float, **info) -> dict:
    return {
        "group": group,
        "name": f"test_infer[{provider}]",
        "params": {"case": "x"},
        "extra_info": {"provider": provider, "images_per_s": 8 / median, **info},
        "stats": {"median": median, "mean": median, "rounds": 3},
    }


def _run(scale: float = 1.0) -> dict:
    benchmarks = [
        _bench("infer-224px-b8", "eager", 0.4 * scale),
        _bench("infer-224px-b8", "compile", 0.2 * scale),
        _bench("infer-224px-b8", "fastmtl", 0.1 * scale, peak_mem_mib=1234.0),
        _bench("train-224px-b8", "eager", 1.0 * scale),
        _bench("train-224px-b8", "smp_unet_r34", 0.5 * scale),
        {  # a kernel benchmark: provider from the parameter, its own speedup kept, AOT stats attached
            "group": "dfe-b1-fwd",
            "name": "test_dfe[triton]",
            "params": {"provider": "triton"},
            "extra_info": {"speedup_vs_eager": 9.0, "aot": [{"kernel": "_dfe_fwd", "n_regs": 96, "n_spills": 0}]},
            "stats": {"median": 0.001 * scale},
        },
        {"group": "dfe-b1-fwd", "name": "test_dfe[eager]", "params": {"provider": "eager"}, "stats": {"median": 0.003}},
        {
            "group": "accuracy-train-isic2017",
            "name": "test_train_budget",
            "params": None,
            "extra_info": {"provider": "resformer_mtl", "dsc": 71.25, "ji": 60.5, "auc_mean": 80.0, "wall_s": 12.0},
            "stats": {"median": 12.0},
        },
    ]
    machine = {"fastmtl": {"cpu_model": "Test CPU", "torch": "2.14.1", "device_slug": f"cpu-test-{scale}"}}
    return {"machine_info": machine, "datetime": "2026-01-01T00:00:00", "benchmarks": benchmarks}


def _write(tmp_path, name: str, data: dict):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_speedups_from_group_baselines():
    benches = _run()["benchmarks"]
    add_speedups(benches)
    by_name = {(b["group"], provider_of(b)): b["extra_info"] for b in benches}
    fast = by_name[("infer-224px-b8", "fastmtl")]
    assert fast["speedup_vs_eager"] == pytest.approx(4.0)
    assert fast["speedup_vs_compiled"] == pytest.approx(2.0)
    assert by_name[("train-224px-b8", "smp_unet_r34")]["speedup_vs_eager"] == pytest.approx(2.0)
    assert "speedup_vs_compiled" not in by_name[("train-224px-b8", "eager")]  # no compiled run in that group
    assert by_name[("dfe-b1-fwd", "triton")]["speedup_vs_eager"] == 9.0  # the test's own value is kept


def test_render_tables_and_png(tmp_path):
    path = _write(tmp_path, "run.json", _run())
    out = tmp_path / "out"
    assert report.main([str(path), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "| group | eager | compile | fastmtl |" in text  # providers as columns, baselines first
    assert "| infer-224px-b8 [images/s] | 20 | 40 (2.00x) | 80 (4.00x) |" in text
    assert "#### infer-224px-b8" in text
    assert "| x compiled | 0.50x | 1.00x | 2.00x |" in text
    assert "| peak MiB | - | - | 1,234 |" in text
    assert "| ms / call | 400 | 200 | 100 |" in text
    assert "| dfe-b1-fwd [ms] | 3 | 1 (9.00x) |" in text  # no throughput recorded: ms per call
    assert "### AOT kernel compile stats" in text and "_dfe_fwd" in text and "| 96 |" in text
    assert "### accuracy" in text and "71.25" in text and "accuracy-train-isic2017 [" not in text
    assert "Test CPU" in text
    for suite in ("infer", "train", "dfe"):
        assert (out / f"{suite}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{suite}]({suite}.png)" in text


def test_compare(tmp_path):
    a = _write(tmp_path, "a.json", _run(1.0))
    b = _write(tmp_path, "b.json", _run(0.5))  # every call twice as fast
    out = tmp_path / "cmp"
    assert report.main(["--compare", str(a), str(b), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "A = `cpu-test-1.0`" in text and "B = `cpu-test-0.5`" in text
    assert "| infer-224px-b8 | fastmtl | images/s | 80 | 160 | 2.00x |" in text
    assert "| dfe-b1-fwd | triton | ms | 1 | 0.5 | 2.00x |" in text  # ms: lower is better, ratio still B's speedup
    assert "| accuracy-train-isic2017 | resformer_mtl | dsc | 71.25 | 71.25 |" in text
    assert (out / "compare-infer.png").is_file()


def test_merge_files_and_cli_errors(tmp_path):
    run = _run()
    part = copy.deepcopy(run)
    part["benchmarks"] = part["benchmarks"][:3]
    rest = copy.deepcopy(run)
    rest["benchmarks"] = rest["benchmarks"][3:]
    data = load([_write(tmp_path, "p.json", part), _write(tmp_path, "r.json", rest)])
    assert len(data["benchmarks"]) == len(run["benchmarks"])
    with pytest.raises(SystemExit):
        report.main([])


def test_readme(tmp_path):
    _write(tmp_path, "cpu-test-torch2.14.1.json", _run())
    text = report.main(["--readme", str(tmp_path)])
    readme = (tmp_path / "README.md").read_text()
    assert text == 0 and readme.startswith("# Benchmark results")
    assert "## cpu-test-torch2.14.1" in readme
    assert "![infer](cpu-test-torch2.14.1/infer.png)" in readme
    assert (tmp_path / "cpu-test-torch2.14.1" / "infer.png").is_file()


def test_cpu_precision_group_puts_speed_and_agreement_in_one_table():
    group, agree = "cpu-precision-224px-b8", {"vs_fp32_mask_dsc": 99.81, "vs_fp32_mask_agreement": 99.9}
    data = {"machine_info": {}, "benchmarks": [
        _bench(group, "eager-fp32", 4.0, weights="random init", vs_fp32_mask_dsc=100.0, dsc_gt_delta=0.0,
               cpu_kind="AVX-512 + VNNI + bf16"),
        _bench(group, "int8", 2.0, dsc_gt_delta=-0.25, vs_fp32_prob_max_abs=0.01, **agree),
        _bench(group, "auto", 2.0, auto_choice="precision int8: 2.00x eager", **agree),
    ]}  # fmt: skip
    add_speedups(data["benchmarks"])
    text = render(data)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "| int8 | 4 | 2.00x | 99.81 | 99.9 | - | 0.01 | -0.25 |" in rows["int8"]
    assert rows["eager-fp32"].split(" | ")[2] == "1.00x"  # eager-fp32 is the group's baseline
    assert "auto chose precision int8: 2.00x eager" in text and "Weights: random init." in text
    assert "CPU kind: AVX-512 + VNNI + bf16." in text  # every result names the CPU kind it ran on
