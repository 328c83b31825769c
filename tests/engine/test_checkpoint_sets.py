"""Crash-consistent checkpoints: a training process killed between any two file operations of a ``last`` save
resumes to the same weights as an uninterrupted run, or is refused with a clear message; never a silent difference.

The kill is real: a forked training process ends itself with ``os._exit`` (no cleanup, no ``finally``) right after
the n-th checkpoint file operation (``FASTMTL_TEST_CRASH_AT``, see :mod:`fastmtl.checkpoint.sets`).
"""

from __future__ import annotations

import multiprocessing
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from fastmtl.checkpoint.sets import CRASH_ENV, verify
from fastmtl.checkpoint.store import CheckpointError, load_model
from fastmtl.engine.train.job import train
from fastmtl.files import FolderBusyError, exclusive_folder
from tests.engine.test_resume import _assert_same_tensors, _losses
from tests.engine.test_train import tiny_config

FIRST_SAVE_OPS = 6  # 3 temporaries written + 3 replaced
SECOND_SAVE_OPS = 12  # + the previous set linked to last.prev.* and removed after


def _config():
    return tiny_config(epochs=2, max_steps_per_epoch=2)  # ``last`` saved after each epoch: ops 1-6 and 7-18


def _killed_child(config, out, crash_at: int) -> None:
    torch.set_num_threads(1)
    os.environ[CRASH_ENV] = str(crash_at)
    train(config, None, out)
    os._exit(0)  # not killed: the hook was never reached


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The killed child trains on one thread (a forked process's OpenMP pool is not to be trusted); the reference
    and the resumed runs must sum in the same order to match it bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train_killed_at(config, out, crash_at: int) -> int:
    process = multiprocessing.get_context("fork").Process(target=_killed_child, args=(config, out, crash_at))
    process.start()
    process.join(120)
    return process.exitcode


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    train(_config(), None, out)
    return out


def _tmp_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("crash_at", range(1, FIRST_SAVE_OPS + SECOND_SAVE_OPS + 1))
def test_a_kill_at_any_file_operation_resumes_exactly_or_refuses(tmp_path, reference, crash_at):
    config, out = _config(), tmp_path / "run"
    assert _train_killed_at(config, out, crash_at) == 77
    if crash_at < FIRST_SAVE_OPS:  # the first save never completed: nothing consistent to resume from
        with pytest.raises(CheckpointError, match="nothing to resume|no consistent checkpoint"):
            train(config, None, out, resume=True)
        assert _tmp_files(out) == []  # the refusal still removed the killed save's temporaries
        return
    train(config, None, out, resume=True)
    _assert_same_tensors(load_file(reference / "last.safetensors"), load_file(out / "last.safetensors"))
    _assert_same_tensors(load_file(reference / "last.train.safetensors"), load_file(out / "last.train.safetensors"))
    _assert_same_tensors(load_file(reference / "best.safetensors"), load_file(out / "best.safetensors"))
    assert _losses(reference) == _losses(out)
    assert verify(out / "last") is None
    assert _tmp_files(out) == [] and not (out / "last.prev.json").exists()


def test_a_mixed_set_without_a_previous_one_is_refused(tmp_path, capsys):
    config = tiny_config(epochs=2, max_steps_per_epoch=2, checkpoint_every_steps=1)
    train(config.replace(stop_after_steps=1), None, tmp_path / "a")
    train(config.replace(stop_after_steps=2), None, tmp_path / "b")
    # weights of step 2 beside the optimizer state and sidecar of step 1: what a kill mid-save used to leave
    (tmp_path / "a" / "last.safetensors").write_bytes((tmp_path / "b" / "last.safetensors").read_bytes())
    assert "belongs to another save" in verify(tmp_path / "a" / "last")
    with pytest.raises(CheckpointError, match="no consistent checkpoint.*belongs to another save"):
        train(config, None, tmp_path / "a", resume=True)


def test_non_finite_weights_are_refused_with_the_tensor_name(tmp_path):
    train(tiny_config(epochs=1, max_steps_per_epoch=1), None, tmp_path)
    path = tmp_path / "best.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(path)
    tensors["seg.bias"][0] = float("nan")
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(CheckpointError, match=r"non-finite values \(NaN or inf\) in seg\.bias"):
        load_model(path)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"a": ' * 40 + "1" + "}" * 40, "nested too deeply"),
        ('"text"', "must be a JSON object"),
        ('{"class_names": "abc"}', "class_names must be a list"),
        ('{"class_names": [1, 2, 3]}', "names of 1 to"),
        ('{"img_size": "224"}', "img_size must be a non-negative integer"),
        ('{"metrics": []}', "metrics must be an object"),
        ('{"class_weights": [1, NaN]}', "class_weights must be a list of finite numbers"),
    ],
)
def test_crafted_metadata_is_refused_by_schema(tmp_path, meta, message):
    train(tiny_config(epochs=1, max_steps_per_epoch=1), None, tmp_path)
    path = tmp_path / "best.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    save_file(load_file(path), path, metadata={**metadata, "fastmtl_meta": meta})
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_a_crafted_model_config_is_refused(tmp_path):
    train(tiny_config(epochs=1, max_steps_per_epoch=1), None, tmp_path)
    path = tmp_path / "best.safetensors"
    for config in ("[1, 2]", "[" * 100_000, '{"name": {"x": 1}}'):
        save_file(load_file(path), path, metadata={"fastmtl_config": config})
        with pytest.raises(CheckpointError, match="invalid model config"):
            load_model(path)


def test_a_second_training_into_a_busy_folder_is_refused_with_the_holder(tmp_path):
    with exclusive_folder(tmp_path, "train"):
        with pytest.raises(FolderBusyError, match=rf"in use by another fastmtl job \(train, pid {os.getpid()}"):
            train(tiny_config(epochs=1, max_steps_per_epoch=1), None, tmp_path)
    assert not (tmp_path / ".fastmtl.lock").exists()
    train(tiny_config(epochs=1, max_steps_per_epoch=1), None, tmp_path)  # free again once the holder is done
