"""Stage 1: screening rules on container metadata and input-table columns, before any decoding."""

from __future__ import annotations

from dataclasses import dataclass, field

from mugv.config import ConfigError
from mugv.video import VideoInfo


@dataclass
class ScreenConfig:
    min_duration: float = 1.0  # seconds
    max_duration: float = 600.0  # seconds; every frame is held at analysis size, so this bounds memory
    min_short_side: int = 128
    max_pixels: int = 4096 * 2160  # larger frames cost too much to decode for what they add
    allowed_sources: list[str] = field(default_factory=list)  # empty: any
    allowed_licenses: list[str] = field(default_factory=list)  # empty: any

    def validate(self) -> None:
        if self.min_duration < 0 or self.max_duration <= self.min_duration:
            raise ConfigError(
                f"screen.min_duration/max_duration = {self.min_duration}/{self.max_duration} must satisfy 0 <= min < max"
            )
        if self.min_short_side < 1 or self.max_pixels < 1:
            raise ConfigError("screen.min_short_side and screen.max_pixels must be >= 1")


def screen_table(cfg: ScreenConfig, source: str, license: str) -> str:
    """The reason an input row is excluded by its table columns, or "" to keep it."""
    if cfg.allowed_sources and source not in cfg.allowed_sources:
        return "source_not_allowed"
    if cfg.allowed_licenses and license not in cfg.allowed_licenses:
        return "license_not_allowed"
    return ""


def screen_info(cfg: ScreenConfig, info: VideoInfo) -> str:
    """The reason a probed video is excluded by its metadata, or "" to keep it."""
    if min(info.width, info.height) < cfg.min_short_side:
        return "too_small"
    if info.pixels > cfg.max_pixels:
        return "too_large"
    if info.duration > cfg.max_duration:
        return "too_long"
    # Short files are judged after decoding, where the real frame times are known.
    return ""


def screen_decoded_duration(min_duration: float, duration: float) -> str:
    """Judged on the decoded frames' real timestamps; `min_duration` is at least one clip long."""
    return "too_short" if duration < min_duration - 1e-6 else ""
