"""GPU readiness without a GPU: every DFE kernel configuration compiles ahead of time for sm_90a and sm_80, uses
tensor-core instructions for 16-bit tiles and spills no registers (``ptxas -v``, which Triton ships), but for the
one stated allowance (``SPILL_ALLOWANCES`` in kernels/aot.py: up to 32 bytes for fp32 on sm_80, which ptxas 12.9
of triton 3.8 spills in one launch). Every autotuning candidate of a launch is compiled for sm_90a (the GPU
target), the default candidate for sm_80 too.

The default run compiles a representative set (smallest and widest level at 224, both conv kernels in fp16 and
fp32, bf16 and the attention kernels once); the ``slow`` test sweeps every configuration of ``dfe_shapes()``.
Compilation runs in a subprocess without ``TRITON_INTERPRET`` (interpreted kernels cannot be compiled).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastmtl.kernels.aot import PTX_OPS

ROOT = Path(__file__).resolve().parents[2]
SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}  # opt-in shared memory per block


def _report(calls: str) -> list[dict]:
    """Rows of ``aot_report`` calls (a Python expression summing lists), computed in a fresh interpreter."""
    script = "\n".join(
        [
            "import json, torch",
            "from fastmtl.models.launches import dfe_shapes",
            "from fastmtl.kernels.dfe.aot import aot_report",
            "at_224 = dfe_shapes((224,))",
            f"print(json.dumps({calls}))",
        ]
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


def _check(rows):
    assert rows
    for row in rows:
        where = f"{row['shape']} {row['launch']} {row['dtype']} sm_{row['capability']} candidate {row['candidate']}"
        # The stated allowance (kernels/aot.py SPILL_ALLOWANCES): fp32 on sm_80, never the GPU target sm_90a.
        allowed = row["spill_allowance"] if row["capability"] == 80 and row["dtype"] == "float32" else 0
        assert row["spill_allowance"] == allowed, where
        assert row["n_spills"] <= allowed, f"{where} spills {row['n_spills']} bytes ({row['n_regs']} registers)"
        assert 0 < row["n_regs"] <= 255, where
        assert row["shared"] <= SHARED_LIMIT[row["capability"]], f"{where} needs {row['shared']} B of shared memory"
        assert set(row["ptx_ops"]) == {*PTX_OPS, "wgmma_wait_min_pending"}, where
        ops = row["ptx_ops"]
        assert ops["ld_global"] + ops["cp_async"] + ops["cp_async_bulk_tensor"] > 0, f"{where} loads nothing"
        if row["dtype"] != "float32" and not row["launch"].startswith("sa-"):
            assert row["has_tensor_cores"], f"{where} issues no tensor-core instruction"
            if row["capability"] == 90:
                assert ops["wgmma"] > 0 and ops["wgmma_wait"] > 0, where
        if row["dtype"] == "float32":  # fp32 stays IEEE (no TF32), so no tensor cores there
            assert not row["has_tensor_cores"], where
        if row["capability"] == 80:  # autotuning candidates other than the default target sm_90a only
            assert row["candidate"] == 0, where


@pytest.mark.slow
def test_aot_representative():
    rows = _report(
        "aot_report([at_224[0], at_224[-1]], (torch.float16, torch.float32), kernels=('branches', 'merge'))"
        " + aot_report(at_224[-1:], (torch.bfloat16,), kernels=('branches',))"
        " + aot_report(at_224[:1], (torch.float16,), kernels=('sa-pool', 'sa-gate'))"
    )
    _check(rows)
    assert {r["arch"] for r in rows} == {"sm_80", "sm_90a"}
    # Each launch: its default for sm_80, and every autotuning candidate of it (at least two) for sm_90a.
    for launch, dtype in (("branches", "float16"), ("merge", "float32"), ("sa-pool", "float16")):
        picked = [r for r in rows if r["launch"] == launch and r["dtype"] == dtype]
        sm90 = {r["candidate"] for r in picked if r["capability"] == 90}
        assert len(sm90) >= 2 and sm90 == set(range(len(sm90))), (launch, dtype, sm90)
        assert {r["candidate"] for r in picked if r["capability"] == 80} == {0}, (launch, dtype)


@pytest.mark.slow
@pytest.mark.aot_sweep
def test_aot_full_sweep():
    _check(_report("aot_report(dfe_shapes())"))
