"""GPU readiness without a GPU: every window-attention kernel the model launches compiles ahead of time.

Each stage at 224 and 512 (``fastmtl.models.launches.window_attention_shapes()``), forward and the three backward
kernels, fp16 and bf16, shifted and plain, for sm_90a and sm_80: the kernels must compile, issue tensor-core
instructions (wgmma on sm_90a, mma.sync on sm_80) and spill no registers. Every autotuning candidate compiles for
sm_90a (the GPU target), the default candidate for sm_80 too. Compilation runs in a fresh process because the kernel
tests import the kernels under the Triton interpreter. Kernel variants depend on window, dtype and shift only
(batch, heads and map size are runtime arguments), so the quick test compiles each variant once; the slow test
compiles every stage."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_COMPILE = """
import json, sys, torch
from fastmtl.models.launches import window_attention_shapes
from fastmtl.kernels.window_attention.aot import candidates, kernel_resources, variants
capabilities, dtypes, every_stage, all_candidates = json.loads(sys.argv[1])
seen, rows = set(), []
for kernel, shape, dtype, shifted in variants(window_attention_shapes(), [getattr(torch, d) for d in dtypes]):
    key = (kernel, shape if every_stage else shape.window, dtype, shifted)
    if key in seen:
        continue
    seen.add(key)
    for candidate in range(len(candidates(shape)) if all_candidates else 1):
        for cap in capabilities if candidate == 0 else [c for c in capabilities if c == 90]:
            usage = kernel_resources(kernel, shape, dtype, shifted, cap, candidate)
            keys = ("n_regs", "n_spills", "shared", "has_tensor_cores", "ptx_ops", "BLOCK_M", "BLOCK_N", "num_stages")
            rows.append(dict(kernel=kernel, shape=shape.name, dtype=str(dtype), shifted=shifted, capability=cap,
                             candidate=candidate, **{k: usage[k] for k in keys}))
print(json.dumps(rows))
"""


def _compile(capabilities, dtypes, every_stage=False, all_candidates=False) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    spec = json.dumps([capabilities, dtypes, every_stage, all_candidates])
    result = subprocess.run(
        [sys.executable, "-c", _COMPILE, spec], env=env, cwd=ROOT, capture_output=True, text=True, timeout=1500
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _assert_ready(rows: list[dict], expected: int) -> None:
    assert len(rows) == expected
    bad = [r for r in rows if r["n_spills"] or not r["has_tensor_cores"] or r["n_regs"] > 255]
    assert not bad, "\n".join(map(str, bad))
    assert all(r["shared"] <= 99 * 1024 for r in rows)  # fits sm_80 and sm_86 (100 KB per block) as well
    for r in rows:  # the report's load / MMA counts: the tiles reach the tensor cores, which are waited on
        ops = r["ptx_ops"]
        assert ops["ld_global"] + ops["cp_async"] + ops["cp_async_bulk_tensor"] > 0, r
        assert ops["wgmma"] > 0 and ops["wgmma_wait"] > 0 if r["capability"] == 90 else ops["mma_sync"] > 0, r


@pytest.mark.slow
def test_every_variant_compiles_for_sm90a_and_sm80():
    # 2 windows (14, 32) x {plain, shifted} x 4 kernels; both dtypes on sm_90a, fp16 on sm_80 (bf16 in the slow test).
    _assert_ready(_compile([90], ["float16", "bfloat16"]), 2 * 2 * 4 * 2)
    _assert_ready(_compile([80], ["float16"]), 2 * 2 * 4)


@pytest.mark.slow
@pytest.mark.aot_sweep
def test_every_candidate_compiles_for_sm90a():
    # The same variants in bf16 with each of the 3 autotuning candidates (the default one again) for sm_90a.
    rows = _compile([90], ["bfloat16"], all_candidates=True)
    _assert_ready(rows, 2 * 2 * 4 * 3)
    assert {(r["BLOCK_M"], r["num_stages"]) for r in rows if r["shape"].startswith("swin0")} == {
        (64, 3),
        (64, 2),
        (128, 3),
    }


@pytest.mark.slow
@pytest.mark.aot_sweep
def test_every_stage_compiles_for_sm90a_and_sm80():
    # 8 stage shapes; the 6 with several windows run shifted and plain: 14 launches x 4 kernels x 2 dtypes x 2 targets.
    _assert_ready(_compile([90, 80], ["float16", "bfloat16"], every_stage=True), 14 * 4 * 2 * 2)
