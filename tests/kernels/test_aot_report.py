"""``python -m fastmtl.kernel_report``: the JSON report of every kernel configuration (here a small slice of it).

Runs in a fresh process without ``TRITON_INTERPRET`` (interpreted kernels cannot be compiled), outside the
repository: the launch shapes come from the installed library (``fastmtl.models.launches``), not from a checkout.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from fastmtl.kernels.aot import PTX_OPS, ptx_ops

ROOT = Path(__file__).resolve().parents[2]


def test_report_command_writes_json(tmp_path):
    out = tmp_path / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "fastmtl.kernel_report", "--json", str(out), "--img-sizes", "224", "--dtypes",
           "float16", "--capabilities", "90", "--launches", "sa-pool", "fwd"]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert {(r["kernel"], r["launch"]) for r in rows} == {("dfe", "sa-pool"), ("window_attention", "fwd")}
    assert report["triton"] and report["torch"] and report["spilling"] == []
    for kernel in ("dfe", "window_attention"):  # every autotuning candidate, default first
        assert sorted({r["candidate"] for r in rows if r["kernel"] == kernel}) == [0, 1, 2]
    for row in rows:
        assert row["arch"] == "sm_90a" and row["n_spills"] == 0 and row["n_regs"] > 0
        assert set(row["ptx_ops"]) == {*PTX_OPS, "wgmma_wait_min_pending"}
    fwd = [r for r in rows if r["launch"] == "fwd"]
    assert all(r["ptx_ops"]["wgmma"] > 0 and r["ptx_ops"]["wgmma_wait"] > 0 for r in fwd)
    assert f"{len(rows)} configurations compiled" in done.stderr


def test_ptx_op_counts():
    ptx = """
	@%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
	ld.global.b16 { %rs1 }, [ %rd2 + 0 ];
	cp.async.cg.shared.global [ %r5 + 0 ], [ %rd3 + 0 ], 0x10, %r6;
	cp.async.commit_group;
	cp.async.wait_group 1;
	cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%r7], [%rd4, {%r8, %r9, %r10, %r11}], [%r12];
	wgmma.fence.sync.aligned;
	wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%f1}, %rd5, %rd6, 1, 1, 1, 0, 1;
	wgmma.commit_group.sync.aligned;
	wgmma.wait_group.sync.aligned 1;
	wgmma.wait_group.sync.aligned 0;
	@!%p2 st.global.b16 [ %rd7 + 0 ], { %rs2 };
"""  # noqa: E501
    assert ptx_ops(ptx) == {
        "ld_global": 2,
        "cp_async": 1,
        "cp_async_bulk_tensor": 1,
        "wgmma": 1,
        "wgmma_wait": 2,
        "mma_sync": 0,
        "st_global": 1,
        "wgmma_wait_min_pending": 0,
    }
