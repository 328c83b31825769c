"""BudgetSchedule: the poly schedule's length fitted to a deadline from the measured steps and validations."""

import pytest

from fastmtl.engine.train.schedule import BudgetSchedule, poly_lr


def _schedule(**kw) -> BudgetSchedule:
    args = {"deadline": 100.0, "steps_per_epoch": 10, "max_steps": 1500, "val_every": 1, "val_steps": 0.0,
            "warm_steps": 5, "measure_steps": 10}  # fmt: skip
    return BudgetSchedule(**{**args, **kw})


def test_plans_the_steps_that_fit_after_the_timed_ones() -> None:
    s = _schedule()
    assert s.needs_sync(5) and s.needs_sync(15) and not s.needs_sync(6)
    assert not s.observe(10.0, 5)  # the clock starts after the warm-up steps
    assert s.observe(11.0, 15)  # 10 steps in 1 s: 0.1 s a step, 89 s left
    assert s.step_s == pytest.approx(0.1) and s.total == 15 + 890 and s.plans[-1]["at_step"] == 15
    assert not s.done(904) and s.done(905) and not s.needs_sync(25)
    # the lr of the last planned step is the poly schedule's last value: decayed to the end
    assert poly_lr(1e-4, s.total - 1, s.total) == pytest.approx(1e-4 * (1 / s.total) ** 0.9)


def test_validations_are_paid_for_and_replanned_with_their_measured_cost() -> None:
    s = _schedule(val_every=2, val_steps=10.0)  # first guess: a validation costs 10 steps (1 s)
    s.observe(10.0, 5)
    s.observe(11.0, 15)
    first = s.total  # 89 s left: 585 steps (58.5 s) reach step 600, the end of epoch 60: 30 validations (30 s)
    assert first == 600  # one step more would start epoch 61, whose validation does not fit
    s.validated(30.0, 200, seconds=3.0, elapsed=3.5)  # a validated epoch's end costs 3 s
    assert s.total < first and s.val_s == 3.0 and len(s.plans) == 2
    assert s.total <= s.max_steps


def test_a_validation_during_the_timed_steps_is_kept_off_their_clock() -> None:
    s = _schedule(steps_per_epoch=8)
    s.observe(10.0, 5)
    s.validated(12.0, 8, seconds=5.0, elapsed=5.0)  # the epoch ended inside the timed steps
    s.observe(16.0, 15)  # 6 s of wall time, 5 of them validating: 0.1 s a step
    assert s.step_s == pytest.approx(0.1)


def test_never_more_than_the_configured_epochs_and_always_one_more_step() -> None:
    s = _schedule(max_steps=40)
    s.observe(10.0, 5)
    s.observe(11.0, 15)
    assert s.total == 40
    late = _schedule(deadline=11.0)
    late.observe(10.0, 5)
    late.observe(11.5, 15)  # past the deadline already: one more step, then the run ends validated
    assert late.total == 16
    record = s.record(150, 1800, 8)
    assert record["paper_steps"] == 150 * 225 and record["planned_steps"] == 40 and record["schedule"] == "budget"


def test_a_plan_fills_only_its_share_of_the_time_left():
    full, headroom = _schedule(), _schedule(fill=0.9)
    for s in (full, headroom):
        s.step_s, s.val_s = 0.1, 0.0
        s.plan(0.0, 0)
    assert full.total == 1000 and headroom.total == 900  # 100 s at 0.1 s a step, all of it or 90 % of it
