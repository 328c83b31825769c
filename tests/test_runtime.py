"""fastmtl.runtime: one mixed-precision vocabulary and one device resolution for every entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from fastmtl.options import AMP_CHOICES
from fastmtl.runtime import amp_dtype, autocast, batch_to_device, resolve_device

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("amp", "cpu", "cuda"),
    [
        ("auto", None, torch.bfloat16),
        ("bf16", torch.bfloat16, torch.bfloat16),
        ("fp16", torch.float16, torch.float16),
        ("off", None, None),
        (True, torch.bfloat16, torch.bfloat16),
        (False, None, None),
        (torch.float16, torch.float16, torch.float16),
        (torch.float32, None, None),
    ],
)
def test_amp_vocabulary(amp, cpu, cuda):
    assert amp_dtype(amp, CPU) is cpu and amp_dtype(amp, CUDA) is cuda


@pytest.mark.parametrize("amp", [None, "fp8", "on", 1])
def test_values_outside_the_vocabulary_raise(amp):
    with pytest.raises(ValueError, match="auto, bf16, fp16, off"):
        amp_dtype(amp, CPU)


def test_the_training_config_accepts_the_same_words():
    from fastmtl.engine.train.config import _RUN_CHOICES

    assert _RUN_CHOICES["amp"] is AMP_CHOICES  # the one vocabulary, not a copy


def test_autocast_is_a_no_op_or_torch_autocast():
    x = torch.ones(2, 2)
    with autocast("cpu"):
        assert torch.mm(x, x).dtype == torch.float32  # "auto" is off on CPU
    with autocast("cpu", "bf16"):
        assert torch.mm(x, x).dtype == torch.bfloat16


def test_resolve_device():
    assert resolve_device("cpu") == CPU and resolve_device(CPU) == CPU
    assert resolve_device("auto") == (CUDA if torch.cuda.is_available() else CPU)
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:1", CUDA):
            with pytest.raises(ValueError, match="no CUDA device"):
                resolve_device(name)


def test_batch_to_device_keeps_tensors_only():
    batch = {"image": torch.zeros(2, 3, 4, 4), "id": ["a", "b"], "label": torch.ones(2, 3)}
    moved = batch_to_device(batch, CPU, channels_last=True)
    assert moved.keys() == {"image", "label"}
    assert moved["image"].is_contiguous(memory_format=torch.channels_last)


def test_cpu_budget_sizes_workers_and_threads(tmp_path, monkeypatch):
    import torch

    from fastmtl import runtime

    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a container limited to 1.5 cores
    assert runtime._cgroup_cpus(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert runtime._cgroup_cpus(tmp_path) is None
    assert runtime._cgroup_cpus(tmp_path / "none") is None
    assert 1 <= runtime.available_cpus() <= (os.cpu_count() or 1)
    assert [runtime.default_workers("cpu", n) for n in (1, 2, 4, 8, 32)] == [0, 0, 0, 2, 8]
    assert [runtime.default_workers("cuda", n) for n in (1, 2, 16)] == [0, 1, 8]
    before = torch.get_num_threads()
    try:
        assert runtime.fit_threads(workers=1, cpus=3, idle=3.0) == 2
        assert runtime.fit_threads(workers=4, cpus=2, idle=2.0) == 1
        assert runtime.fit_threads(workers=0, cpus=4, idle=1.2) == 1  # another job holds most cores: no more threads
        assert runtime.fit_threads(workers=0, cpus=1) == 1
    finally:
        torch.set_num_threads(before)


def test_fit_threads_sizes_the_inter_op_pool_of_a_fresh_process():
    code = "import torch; from fastmtl import runtime; runtime.fit_threads(0, cpus=2, idle=2.0); " \
           "print(torch.get_num_threads(), torch.get_num_interop_threads())"  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["2", "1"]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity and /proc/stat")
def test_idle_cpus_sees_a_busy_core(tmp_path):
    """A process spinning on core 0 makes it count as busy; unreadable counters give None, not a guess."""
    from fastmtl import runtime

    assert runtime.idle_cpus(stat=tmp_path / "missing") is None
    cpu = min(os.sched_getaffinity(0))  # a core this process may use (a container's cpuset may not start at 0)
    spin = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        time.sleep(0.3)
        assert runtime.idle_cpus({cpu}, interval=0.3) < 0.5
    finally:
        spin.kill()
        spin.wait()
    assert 0.0 <= runtime.idle_cpus() <= len(os.sched_getaffinity(0))


def test_the_simulated_cpu_kind_is_what_cpu_info_says(cpu_kind):
    from fastmtl.runtime import cpu_info

    assert cpu_info() == cpu_kind and cpu_kind.kind in ("AVX2", "AVX-512 + VNNI + bf16", "AMX")


def test_a_subprocess_sees_the_simulated_kind_and_an_unknown_one_is_refused(monkeypatch):
    from fastmtl.runtime import SIMULATED_CPUS, cpu_info

    monkeypatch.setenv("FASTMTL_CPU", "amx")
    code = "from fastmtl.runtime import cpu_info; print(cpu_info().key)"
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert printed.strip() == SIMULATED_CPUS["amx"].key
    monkeypatch.setenv("FASTMTL_CPU", "avx9")
    with pytest.raises(ValueError, match="FASTMTL_CPU='avx9': expected one of avx2, avx512-vnni-bf16, amx"):
        cpu_info()
    monkeypatch.delenv("FASTMTL_CPU")
    assert cpu_info().name not in {kind.name for kind in SIMULATED_CPUS.values()}  # the CPU as detected
