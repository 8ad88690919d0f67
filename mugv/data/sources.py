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


def build_data_source(cfg: RunConfig) -> DataSource:
    if cfg.data.source == "synthetic":
        return SyntheticLatents(cfg.data, cfg.model.in_channels, cfg.model.text_dim, seed=cfg.train.seed)
    raise ValueError(f"data.source = {cfg.data.source!r} is not supported")
