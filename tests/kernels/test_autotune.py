"""Autotuning of the kernels (kernels/autotune.py): candidates per launch, pruning, the recorded choices, and
tracing of autotuned launches by ``torch.compile``'s machinery.

On CPU the kernels run in the interpreter with their first candidate only (no timing); the tracing test runs in a
fresh process without the interpreter on fake CUDA tensors, so it needs no GPU either.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastmtl.kernels
from fastmtl.kernels import autotune
from fastmtl.kernels._utils import interpreted
from fastmtl.kernels.dfe import ops as dfe_ops
from fastmtl.kernels.window_attention import ops as wa_op
from fastmtl.kernels.window_attention import window_attention

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.triton
if DEVICE == "cpu" and not interpreted():
    pytest.skip("the kernel modules were imported before TRITON_INTERPRET=1 was set", allow_module_level=True)


def _frozen(params: dict) -> tuple:
    return tuple(sorted(params.items()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("c_in", "c_out"), [(5, 4), (64, 64), (1024, 256), (512, 512), (2048, 512)])
def test_prune_keeps_the_launch_candidates_in_order(c_in, c_out, dtype):
    """Every candidate of a launch is among the tuner's configs, and pruning returns exactly them, in order."""
    x = torch.empty(1, c_in, 4, 4, dtype=dtype, device="meta")
    args = {"x_ptr": x, "c_in": c_in, "c_out": c_out}
    wanted = dfe_ops.conv_configs(c_in, c_out, dtype)
    assert len(wanted) >= 2 and len({_frozen(w) for w in wanted}) == len(wanted)
    pruned = dfe_ops.BRANCHES._prune(dfe_ops.BRANCHES.tuner.configs, {}, **args)
    assert [autotune.as_dict(c) for c in pruned] == wanted


def test_window_attention_candidates_are_tuner_configs():
    for window in (2, 3, 7, 14, 16, 32):
        args = {"WINDOW": window}
        wanted = wa_op.candidates(args)
        for tuned in wa_op.TUNED.values():
            assert [autotune.as_dict(c) for c in tuned._prune(tuned.tuner.configs, {}, **args)] == wanted


@pytest.mark.skipif(DEVICE == "cuda", reason="checks the interpreter's single fixed configuration")
def test_interpreter_runs_the_default_candidate_and_records_it():
    x = torch.randn(1, 5, 6, 7)
    weight = torch.randn(2, 9, 5, 4)
    out = dfe_ops.dfe_branches(x, weight, rates=[0, 2], relu=True)
    torch.testing.assert_close(out, dfe_ops.dfe_branches_ref(x, weight, None, [0, 2], False, True))
    qkv, table = torch.randn(1, 8, 8, 3, 2, 16), torch.randn(49, 2)
    window_attention(qkv, table, window=4, shift=2)

    chosen = fastmtl.kernels.chosen_configs()
    json.dumps(chosen)  # the benchmark runner writes it out as is

    def lookup(kernel, prefix):  # shape key: the key arguments, then the dtypes of the tensor arguments
        (config,) = [v for k, v in chosen[kernel].items() if k.startswith(prefix + ",float32")]
        return config

    dfe_key = "c_in=5,c_out=4,height=6,width=7,n_branches=2,stride_xc=42,SUM_BRANCHES=False"
    assert lookup("_dfe_branches_kernel", dfe_key) == dfe_ops.conv_config(5, 4, torch.float32)
    wa_key = "WINDOW=4,HEAD_DIM=16,SHIFTED=True,n_heads=2,height=8,width=8"
    assert lookup("_window_attention_fwd_kernel", wa_key) == wa_op.configs(16)[0]
    assert not dfe_ops.BRANCHES.tuner.cache  # nothing was timed


_TRACE = """
import re, torch
from functorch.compile import aot_function
from torch._subclasses.fake_tensor import FakeTensorMode
from fastmtl.kernels.dfe import ops
from fastmtl.kernels.window_attention import window_attention

graphs = []
def keep(gm, inputs):
    graphs.append(gm.code)
    return gm

with FakeTensorMode():  # fake CUDA tensors: traced, never launched
    x = torch.empty(2, 256, 14, 14, device="cuda", dtype=torch.bfloat16)
    w = torch.empty(2, 9, 256, 256, device="cuda", dtype=torch.bfloat16)
    qkv = torch.empty(1, 14, 14, 3, 2, 32, device="cuda", dtype=torch.bfloat16)
    table = torch.empty(169, 2, device="cuda")
    aot_function(lambda x, w: ops.dfe_branches(x, w, rates=[0, 2], relu=True), keep)(x, w)
    aot_function(lambda q, t: window_attention(q, t, window=7, shift=3), keep)(qkv, table)
grids = [m.group(1) for g in graphs for m in re.finditer(r"triton_kernel_wrapper_functional.*?grid = (\\[.*?\\]),", g)]
print(grids)
"""


def test_autotuned_launches_trace_into_graphs():
    """``triton_op`` + ``wrap_triton`` trace each autotuned launch into one kernel node with one grid per candidate
    (Inductor times them); runs without the interpreter on fake CUDA tensors."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", _TRACE], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    grids = done.stdout.strip().splitlines()[-1]
    dfe_candidates = dfe_ops.conv_configs(256, 256, torch.bfloat16)
    batch_tiles = [2 * -(-196 // c["BLOCK_M"]) * 2 for c in dfe_candidates]  # batch x pixel tiles x branches
    expected_dfe = str([(t, 256 // c["BLOCK_N"], 1) for t, c in zip(batch_tiles, dfe_candidates)])
    expected_wa = str([(1 * 2 * 4, -(-49 // c["BLOCK_M"]), 1) for c in wa_op.configs(49)])  # batch x heads x windows
    assert grids == str([expected_dfe, expected_wa]), grids
