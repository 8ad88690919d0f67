"""Learning-rate schedules as multipliers of the base rate."""

from __future__ import annotations

import math

from mugv.config import OptimConfig


def lr_multiplier(step: int, total_steps: int, optim: OptimConfig) -> float:
    """Linear warmup to 1, then constant, cosine or linear decay to `min_lr_ratio` at `total_steps`."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    span = max(total_steps - optim.warmup_steps, 1)
    progress = min(max(step - optim.warmup_steps, 0) / span, 1.0)
    floor = optim.min_lr_ratio
    if optim.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (1 - floor) * (1 - progress)
