"""GPU readiness without a GPU: every DFE kernel configuration compiles ahead of time for sm_90a and sm_80, uses
tensor-core instructions for 16-bit tiles and spills no registers (``ptxas -v``, which Triton ships).

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

ROOT = Path(__file__).resolve().parents[2]
SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}  # opt-in shared memory per block


def _report(calls: str) -> list[dict]:
    """Rows of ``aot_report`` calls (a Python expression summing lists), computed in a fresh interpreter."""
    script = "\n".join(
        [
            "import json, torch",
            "from bench.shapes import dfe_shapes",
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
        where = f"{row['shape']} {row['launch']} {row['dtype']} sm_{row['capability']}"
        assert row["n_spills"] == 0, f"{where} spills {row['n_spills']} bytes ({row['n_regs']} registers)"
        assert 0 < row["n_regs"] <= 255, where
        assert row["shared"] <= SHARED_LIMIT[row["capability"]], f"{where} needs {row['shared']} B of shared memory"
        if row["dtype"] != "float32" and not row["launch"].startswith("sa-"):
            assert row["has_tensor_cores"], f"{where} issues no tensor-core instruction"
        if row["dtype"] == "float32":  # fp32 stays IEEE (no TF32), so no tensor cores there
            assert not row["has_tensor_cores"], where


def test_aot_representative():
    rows = _report(
        "aot_report([at_224[0], at_224[-1]], (torch.float16, torch.float32), kernels=('branches', 'merge'))"
        " + aot_report(at_224[-1:], (torch.bfloat16,), kernels=('branches',))"
        " + aot_report(at_224[:1], (torch.float16,), kernels=('sa-pool', 'sa-gate'))"
    )
    _check(rows)
    assert {r["arch"] for r in rows} == {"sm_80", "sm_90a"}
    assert len(rows) == 22


@pytest.mark.slow
def test_aot_full_sweep():
    _check(_report("aot_report(dfe_shapes())"))
