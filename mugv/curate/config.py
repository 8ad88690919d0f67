"""The `mugv curate` configuration: one section per stage, defaults from MUGV-SPEC section 5.

Load with `load_config(profile, overrides, cls=CurateConfig)`; every section validates itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mugv.config import ConfigError
from mugv.curate.aesthetic import AestheticConfig
from mugv.curate.balance import BalanceConfig
from mugv.curate.caption import CaptionConfig
from mugv.curate.dedup import DedupConfig
from mugv.curate.motion import MotionConfig
from mugv.curate.postprocess import PostprocessConfig
from mugv.curate.scenes import ClipsConfig, ScenesConfig
from mugv.curate.screen import ScreenConfig
from mugv.curate.sharpness import SharpnessConfig
from mugv.curate.storage import check_storage_options


@dataclass
class DecodeConfig:
    # Frames are decoded once at this size (shorter side) and shared by every stage; sharpness
    # and motion thresholds are in pixels at this size, so change them together.
    short_side: int = 256

    def validate(self) -> None:
        if self.short_side < 16:
            raise ConfigError(f"decode.short_side = {self.short_side} must be >= 16")


@dataclass
class ExecutionConfig:
    backend: Literal["process", "ray"] = "process"
    workers: int = 0  # 0: one per CPU core
    resume: bool = True  # skip shards finished by an earlier run with the same settings
    # Input videos per part file (DIR/parts/...): what a rerun after a kill skips, and what it redoes.
    shard_size: int = 16
    progress: bool = True
    ray_address: str = ""  # empty: start or join a local Ray instance
    # fsspec options per protocol, e.g. {s3 = {anon = true, endpoint_url = "http://minio:9000"}};
    # credentials are refused here: they come from the environment (mugv/curate/storage.py).
    storage_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache_dir: str = ""  # where remote videos are copied for decoding (one a worker); empty: the temp folder

    # Ray: the object store memory this run's pipeline may fill before its upstream stages wait
    # (back-pressure); 0: Ray Data's default, a fraction of the store.
    ray_object_store_mb: int = 0

    def validate(self) -> None:
        if self.workers < 0 or self.ray_object_store_mb < 0:
            raise ConfigError(f"run.workers = {self.workers} and run.ray_object_store_mb = {self.ray_object_store_mb} must be >= 0")
        if self.shard_size < 1:
            raise ConfigError(f"run.shard_size = {self.shard_size} must be >= 1")
        check_storage_options(self.storage_options, "run.storage_options")


@dataclass
class CurateConfig:
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    scenes: ScenesConfig = field(default_factory=ScenesConfig)
    clips: ClipsConfig = field(default_factory=ClipsConfig)
    sharpness: SharpnessConfig = field(default_factory=SharpnessConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    aesthetic: AestheticConfig = field(default_factory=AestheticConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    run: ExecutionConfig = field(default_factory=ExecutionConfig)
