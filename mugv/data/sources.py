"""Training data sources. A source hands out `LatentBatch`es and can save and restore its position."""

from __future__ import annotations

from typing import Protocol

from mugv.config import RunConfig
from mugv.data.batch import LatentBatch
from mugv.data.synthetic import SyntheticLatents


class DataSource(Protocol):
    def next_batch(self) -> LatentBatch: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def data_parallel_position(cfg: RunConfig) -> tuple[int, int]:
    """(dp rank, dp world size) when the caller does not say: the process group's rank and size
    when every rank is a data-parallel replica (no tp / cp / pp), else (0, 1)."""
    import torch.distributed as dist

    p = cfg.parallel
    if dist.is_available() and dist.is_initialized() and p.tp == p.cp == p.pp == 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def build_data_source(cfg: RunConfig, dp_rank: int | None = None, dp_world_size: int | None = None) -> DataSource:
    """The configured source. Sources that split data across data-parallel ranks (`shards`) take
    this process's dp rank and the dp world size; ranks of one tp / cp / pp group share a dp rank."""
    if cfg.data.source == "synthetic":
        return SyntheticLatents(cfg.data, cfg.model.in_channels, cfg.model.text_dim, seed=cfg.train.seed)
    if cfg.data.source == "shards":
        from mugv.data.loader import ShardSource

        if dp_rank is None or dp_world_size is None:
            dp_rank, dp_world_size = data_parallel_position(cfg)
        return ShardSource(cfg.data, cfg.model, seed=cfg.train.seed, dp_rank=dp_rank, dp_world_size=dp_world_size)
    if cfg.data.source == "pairs":
        from mugv.data.pairs import LatentPairSource

        return LatentPairSource(cfg.data, cfg.model.latent_channels, cfg.model.text_dim, seed=cfg.train.seed)
    raise ValueError(f"data.source = {cfg.data.source!r} is not supported")
