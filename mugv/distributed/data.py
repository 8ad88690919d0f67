"""Per-data-parallel-rank data: every dp rank draws disjoint samples; the ranks of one tp / cp / pp
group (same dp rank) draw the same ones."""

from __future__ import annotations

from mugv.config import RunConfig
from mugv.data.batch import LatentBatch
from mugv.data.synthetic import SyntheticLatents
from mugv.utils.seeds import rank_seed


class DataParallelSyntheticLatents(SyntheticLatents):
    """SyntheticLatents where step s of dp rank d takes pool entries
    position + d * batch_size ... position + (d + 1) * batch_size - 1, and the position advances
    by dp_size * batch_size: the global batch is the concatenation over dp ranks, and the state
    (the global position) is the same on every rank, so it resumes at any dp size."""

    def __init__(self, *args, dp_rank: int, dp_size: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.dp_rank, self.dp_size = dp_rank, dp_size

    def next_batch(self) -> LatentBatch:
        b = self.cfg.batch_size
        start = self.position + self.dp_rank * b
        self.position = start  # the parent draws from `position` and advances it by b
        batch = super().next_batch()
        self.position = start - self.dp_rank * b + self.dp_size * b
        return batch


def build_dp_data_source(cfg: RunConfig, dp_rank: int, dp_size: int):
    if cfg.data.source == "synthetic":
        return DataParallelSyntheticLatents(
            cfg.data, cfg.model.in_channels, cfg.model.text_dim, seed=cfg.train.seed, dp_rank=dp_rank, dp_size=dp_size
        )
    from mugv.data.sources import build_data_source

    return build_data_source(cfg, dp_rank=dp_rank, dp_world_size=dp_size)


def dp_generator_seed(seed: int, dp_rank: int) -> int:
    """The step generator's seed on dp rank `dp_rank` (rank 0 keeps the single-process seed)."""
    return rank_seed(seed, dp_rank)
