"""The paper's learning-rate schedule, ``lr = base * (1 - it / max_it) ** power`` stepped every iteration, and its
budget-aware length (:class:`BudgetSchedule`).

A budget that cannot hold the protocol's epochs (150 epochs of ISIC at 224 px do not fit minutes on one GPU)
would otherwise stop the run with the poly schedule barely decayed. :class:`BudgetSchedule` measures the first
steps, sets the total number of steps that fit before the deadline (the validations included), and the poly
schedule runs to its end over those steps; after each validation the plan is redone with the measured validation
time. A run never plans more steps than its configured epochs hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["BudgetSchedule", "poly_lr", "set_lr"]


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """Learning rate of (0-based) ``iteration`` out of ``max_iterations``; 0 once the schedule has run out."""
    if max_iterations <= 0:
        raise ValueError(f"max_iterations must be positive, got {max_iterations}")
    remaining = max(1.0 - iteration / max_iterations, 0.0)
    return base_lr * remaining**power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Sets every parameter group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class BudgetSchedule:
    """Fits the schedule's length to a deadline.

    Args:
        deadline: ``time.monotonic()`` by which the training and its validations must be done.
        steps_per_epoch: optimizer steps per epoch.
        max_steps: the configured epochs' steps (the plan never exceeds it).
        val_every: validate every this many epochs (and after the last one).
        val_steps: one validation's cost in training steps, the guess used before one was timed (the plan is redone
            once one was).
        warm_steps: steps before the clock starts (compilation, autotuning, CUDA graph capture).
        measure_steps: steps timed for the first plan.
        fill: the share of the time left that a plan fills; the rest absorbs steps and validations slower than
            measured (other jobs on the machine, clocks), so that the run ends on its schedule, not at the budget.
    """

    deadline: float
    steps_per_epoch: int
    max_steps: int
    val_every: int = 1
    val_steps: float = 0.0
    warm_steps: int = 5
    measure_steps: int = 10
    fill: float = 1.0
    total: int | None = None  # the planned number of steps, once measured
    step_s: float | None = None  # measured seconds per step (device time, synchronised)
    val_s: float | None = None  # measured seconds of one (warm) validation
    plans: list[dict] = field(default_factory=list)  # every (re)plan: step, total, seconds left, step_s, val_s
    _mark: tuple[float, int] | None = None

    @classmethod
    def fitting(cls, deadline: float, steps_per_epoch: int, config, val_images: int) -> BudgetSchedule:
        """The schedule of a run of ``config`` (a TrainConfig) with ``val_images`` validation images. A validation's
        first guess: its batches at half a training step each (a forward is about a third of a training step).
        Its plans fill 90 % of the time left (a run on a CPU that other jobs share missed its plan by one step in
        189 with no headroom)."""
        eval_batch = config.eval_batch_size
        batches = math.ceil(val_images / eval_batch)
        run, optim = config.run, config.optim
        batches = min(batches, run.max_val_steps) if run.max_val_steps else batches
        return cls(deadline=deadline, steps_per_epoch=steps_per_epoch, max_steps=optim.epochs * steps_per_epoch,
                   val_every=run.val_every_epochs, val_steps=0.5 * batches * eval_batch / optim.batch_size,
                   warm_steps=min(5, steps_per_epoch), measure_steps=max(min(10, steps_per_epoch), 3),
                   fill=0.9)  # fmt: skip

    def describe(self, epochs: int) -> str:
        """One line about the latest plan."""
        plan = self.plans[-1]
        return (f"budget schedule: {plan['total_steps']} steps ({plan['total_steps'] / self.steps_per_epoch:.2f} of "
                f"{epochs} epochs) fit the {plan['seconds_left']:.0f} s left at {plan['step_s'] * 1e3:.1f} ms/step; "
                "the poly schedule runs to its end over them")  # fmt: skip

    def needs_sync(self, global_step: int) -> bool:
        """Whether the caller must wait for the device after ``global_step`` (a clock mark is taken there)."""
        if self.total is not None:
            return False
        return global_step == self.warm_steps or global_step == self.warm_steps + self.measure_steps

    def observe(self, now: float, global_step: int) -> bool:
        """After a synchronised step: takes the clock marks, plans once the measured steps are done. True when a
        (new) plan was made."""
        if self.total is not None:
            return False
        if global_step == self.warm_steps:
            self._mark = (now, global_step)
        elif self._mark is not None and global_step >= self._mark[1] + self.measure_steps:
            t0, s0 = self._mark
            self.step_s = (now - t0) / (global_step - s0)
            self.plan(now, global_step)
            return True
        return False

    def validated(self, now: float, global_step: int, seconds: float, elapsed: float) -> None:
        """A validated epoch's end cost ``seconds`` (a warm validation, checkpoint, logs; ``elapsed`` is what it
        took, a cold first validation included): re-plans with it, or, while the steps are still being timed, keeps
        it out of their clock."""
        self.val_s = seconds
        if self.step_s is not None:
            self.plan(now, global_step)
        elif self._mark is not None:
            self._mark = (self._mark[0] + elapsed, self._mark[1])

    def _validations(self, done: int, total: int) -> int:
        """Validations still to come if the run ends after ``total`` steps (the last one always validates)."""
        epoch_now = done // self.steps_per_epoch  # complete epochs so far
        epoch_end = math.ceil(total / self.steps_per_epoch)
        regular = epoch_end // self.val_every - epoch_now // self.val_every
        return regular + (0 if epoch_end % self.val_every == 0 else 1)

    def plan(self, now: float, done: int) -> int:
        """Sets ``total``: the most steps that fit in the time left with the validations they bring."""
        assert self.step_s is not None
        left = self.deadline - now
        val_s = self.val_s if self.val_s is not None else self.val_steps * self.step_s
        lo, hi = 0, max(int(left / max(self.step_s, 1e-9)), 0)  # the validations grow with the epochs spanned:
        while lo < hi:  # the most steps whose time and validations fit (a bisection: the cost only grows)
            mid = (lo + hi + 1) // 2
            if mid * self.step_s + self._validations(done, done + mid) * val_s <= left * self.fill:
                lo = mid
            else:
                hi = mid - 1
        steps = lo
        self.total = min(max(done + steps, done + 1), self.max_steps)
        self.plans.append({"at_step": done, "total_steps": self.total, "seconds_left": round(left, 2),
                           "step_s": round(self.step_s, 5), "val_s": round(val_s, 3)})  # fmt: skip
        return self.total

    def done(self, global_step: int) -> bool:
        """True once the planned steps are done."""
        return self.total is not None and global_step >= self.total

    def record(self, paper_epochs: int, full_images: int, batch: int) -> dict:
        """What the summary says about the schedule: the plan, and the epochs it spans against the paper's
        (``full_images``: a full epoch's images, without any limit on them)."""
        total = self.total
        paper_steps = paper_epochs * (full_images // batch if full_images else self.steps_per_epoch)
        return {
            "schedule": "budget",
            "planned_steps": total,
            "planned_epochs": None if total is None else total / self.steps_per_epoch,
            "paper_epochs": paper_epochs,
            "paper_steps": paper_steps,
            "planned_share_of_paper": None if total is None else total / paper_steps,
            "step_s": self.step_s,
            "val_s": self.val_s,
            "plans": self.plans,
        }
