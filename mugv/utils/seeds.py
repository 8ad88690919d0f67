"""How mugv derives the seeds of its random streams from a run's seed: one rule, one place."""

from __future__ import annotations

# A prime larger than any index a stream draws, so that two (seed, index) pairs never share a seed.
SEED_STRIDE = 1_000_003
# The offset of streams kept apart from training's own draws (held-out batches, sample renders).
HELD_OUT_OFFSET = 7919


def derived_seed(seed: int, index: int) -> int:
    """The seed of item `index` (a sample, a step, an evaluation batch) of a stream seeded `seed`."""
    return seed * SEED_STRIDE + index


def rank_seed(seed: int, rank: int) -> int:
    """A data-parallel rank's seed; rank 0 keeps `seed` itself."""
    return seed + SEED_STRIDE * rank


def held_out_seed(seed: int) -> int:
    return seed + HELD_OUT_OFFSET


def restart_seed(seed: int, step: int) -> int:
    """A generator restarted at `step` (resuming under another data-parallel size)."""
    return seed + HELD_OUT_OFFSET * step
