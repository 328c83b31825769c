"""One evaluation loop: training validation, ``evaluate`` and the device-resident validation agree."""

from __future__ import annotations

import math

import pytest
import torch

import fastmtl
from fastmtl.engine.distributed import DistInfo
from fastmtl.engine.evaluate import job as evaluate
from fastmtl.engine.evaluate import loop as eval_loop
from fastmtl.engine.evaluate.job import evaluate_model
from fastmtl.engine.evaluate.loop import EvalState, run_evaluation
from fastmtl.engine.train import loop
from fastmtl.engine.train.loaders import build_run_data, make_val_loader
from fastmtl.engine.train.loop import StepContext, validate
from fastmtl.losses import MTLLoss
from tests.engine.test_train import tiny_config


@pytest.fixture
def setup():
    config = tiny_config(data_options={"n": 10}, eval_batch_size=4)
    data = build_run_data(config, None)
    torch.manual_seed(0)
    model = fastmtl.create_model("tiny_mtl_test", img_size=32, seg_classes=1, cls_classes=3)
    ctx = StepContext(model, model, None, None, MTLLoss(1, 0.25), DistInfo())
    return ctx, make_val_loader(data, config, DistInfo()), data


def test_validation_and_evaluate_run_the_same_loop(setup, monkeypatch):
    ctx, loader, data = setup
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("loss_fn") is not None)
        return run_evaluation(*args, **kwargs)

    for module in (loop, evaluate):  # both modules bind the one eval_loop function
        assert module.run_evaluation is eval_loop.run_evaluation
        monkeypatch.setattr(module, "run_evaluation", spy)
    validated = validate(ctx, loader, data.class_names, 1)
    metrics, records = evaluate_model(ctx.raw_model, loader, seg_classes=1, class_names=data.class_names)
    assert calls == [True, False]
    assert validated.keys() == {"loss", *metrics} and len(records) == metrics["n_images"] == len(loader.dataset)
    for key, value in metrics.items():
        assert validated[key] == pytest.approx(value, rel=1e-6, nan_ok=True), key
    assert math.isfinite(validated["loss"]) and validated["loss"] > 0


def test_states_merge_like_one_pass(setup):
    ctx, loader, data = setup
    kwargs = {"seg_classes": 1, "class_names": data.class_names, "loss_fn": ctx.loss_fn}
    batches = list(loader)
    whole = run_evaluation(ctx.raw_model, batches, **kwargs)
    halves = [run_evaluation(ctx.raw_model, part, **kwargs) for part in (batches[:1], batches[1:])]
    merged = EvalState.from_state(halves[0].to_state()).merge(EvalState.from_state(halves[1].to_state()))
    assert merged.n_images == whole.n_images and merged.loss_sum == pytest.approx(whole.loss_sum)
    for key, value in whole.metrics().items():
        assert merged.metrics()[key] == pytest.approx(value, rel=1e-6, nan_ok=True), key


def test_max_steps_and_training_mode(setup):
    ctx, loader, data = setup
    ctx.raw_model.train()
    state = run_evaluation(ctx.raw_model, loader, seg_classes=1, class_names=data.class_names, max_steps=1)
    assert state.n_images == 4 and state.loss_sum is None and "loss" not in state.metrics()
    assert ctx.raw_model.training
