"""The paper's learning-rate schedule: ``lr = base * (1 - it / max_it) ** power``, stepped every iteration."""

from __future__ import annotations

import torch

__all__ = ["poly_lr", "set_lr"]


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
