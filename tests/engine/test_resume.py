"""A run killed mid-epoch (or at an epoch boundary) and resumed ends with bit-identical weights.

The kill is simulated with ``stop_after_steps``: the run returns after that step without saving anything, so
the resume starts from the last periodic checkpoint and has to redo the steps after it.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fastmtl.engine.train.job import train
from tests.engine.test_train import tiny_config


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def _losses(run_dir) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _kill_and_resume(tmp_path, config, stop_after: int, **resume_changes):
    reference = train(config, None, tmp_path / "reference")
    killed = train(config.replace(stop_after_steps=stop_after), None, tmp_path / "killed")
    assert killed["stopped_early"] and killed["global_step"] == stop_after
    resumed = train(config.replace(**resume_changes), None, tmp_path / "killed", resume=True)
    assert resumed["global_step"] == reference["global_step"] and not resumed["stopped_early"]
    return tmp_path / "reference", tmp_path / "killed"


@pytest.mark.parametrize(
    ("stop_after", "resume_changes"),
    [
        (3, {}),  # last periodic checkpoint at step 2, mid epoch 1: redo the epoch's last step
        (5, {"num_workers": 2}),  # checkpoint at step 4, mid epoch 2; the data order must not depend on workers
    ],
)
def test_resume_is_bit_exact(tmp_path, stop_after, resume_changes):
    config = tiny_config(epochs=2, max_steps_per_epoch=3, checkpoint_every_steps=2)
    reference, killed = _kill_and_resume(tmp_path, config, stop_after, **resume_changes)
    _assert_same_tensors(load_file(reference / "last.safetensors"), load_file(killed / "last.safetensors"))
    _assert_same_tensors(load_file(reference / "best.safetensors"), load_file(killed / "best.safetensors"))
    _assert_same_tensors(load_file(reference / "last.train.safetensors"), load_file(killed / "last.train.safetensors"))
    assert _losses(reference) == _losses(killed)


@pytest.mark.slow
def test_resume_is_bit_exact_for_a_real_model(tmp_path):
    config = tiny_config(model="unet_resnet34_mtl", batch_size=1, lr=1e-3, max_steps_per_epoch=2, max_val_steps=1)
    # only epoch-end checkpoints: killed after step 3, the resume starts from the end of epoch 1 and redoes step 3
    reference, killed = _kill_and_resume(tmp_path, config, 3)
    _assert_same_tensors(load_file(reference / "last.safetensors"), load_file(killed / "last.safetensors"))
    assert _losses(reference) == _losses(killed)


def test_resume_refuses_a_changed_config(tmp_path):
    config = tiny_config(epochs=2, max_steps_per_epoch=2, checkpoint_every_steps=1)
    train(config.replace(stop_after_steps=1), None, tmp_path)
    with pytest.raises(ValueError, match=r"differs from the saved run in \['optim.epochs', 'optim.lr'\]"):
        train(config.replace(lr=0.5, epochs=3), None, tmp_path, resume=True)


def test_time_limited_run_saves_and_resumes_to_the_same_weights(tmp_path):
    # a limit that is up after every step: each call trains one step (or finishes an epoch), saves and returns
    config = tiny_config(epochs=2, max_steps_per_epoch=3)
    reference = train(config, None, tmp_path / "reference")
    boxed = config.replace(time_limit_min=1e-9)
    calls = [train(boxed, None, tmp_path / "boxed")]
    while calls[-1]["stopped_early"]:
        assert (tmp_path / "boxed" / "last.safetensors").is_file()
        calls.append(train(boxed, None, tmp_path / "boxed", resume=True))
        assert len(calls) <= 6, "the time-limited run does not advance"
    # stops after steps 1, 2, 4 and 5; steps 3 and 6 end an epoch, which validates and goes on
    assert [c["global_step"] for c in calls] == [1, 2, 4, 5, 6]
    # the classic step's cut epochs are recorded as the device step's are (one epoch loop for both)
    assert [c["partial_epoch"].get("steps") for c in calls] == [1, 1, 1, 1, None]
    assert calls[-1]["epochs_completed"] == 2 and reference["global_step"] == 6
    _assert_same_tensors(
        load_file(tmp_path / "reference" / "last.safetensors"), load_file(tmp_path / "boxed" / "last.safetensors")
    )
    assert _losses(tmp_path / "reference") == _losses(tmp_path / "boxed")
