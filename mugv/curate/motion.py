"""Filter: motion as the mean optical-flow magnitude (pixels per frame at analysis resolution)
over evenly spaced frame pairs (MUG-V: 3 pairs, kept in [1, 20])."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mugv.config import ConfigError
from mugv.video import sample_indices, to_gray


@dataclass
class MotionConfig:
    enabled: bool = True
    min_score: float = 1.0  # below: nearly static
    max_score: float = 20.0  # above: chaotic motion, flashes, cuts the splitter missed
    pairs: int = 3
    pair_gap: int = 1  # frames between the two frames of a pair

    def validate(self) -> None:
        if not 0 <= self.min_score < self.max_score or self.pairs < 1 or self.pair_gap < 1:
            raise ConfigError("motion needs 0 <= min_score < max_score, pairs >= 1 and pair_gap >= 1")


def motion_score(cfg: MotionConfig, frames: np.ndarray, scale: float = 1.0) -> float:
    """Mean Farneback flow magnitude over `pairs` frame pairs evenly spaced through the clip.

    `frames` are RGB [T, H, W, 3] or luma [T, H, W], and may be a copy downscaled by 1/`scale`
    from the analysis resolution (cheaper flow); magnitudes are multiplied by `scale` so they
    stay in analysis-resolution pixels."""
    if len(frames) <= cfg.pair_gap:
        return 0.0
    starts = sample_indices(0, len(frames) - cfg.pair_gap, cfg.pairs)
    magnitudes = []
    for start in starts:
        first, second = _luma(frames[start]), _luma(frames[start + cfg.pair_gap])
        flow = cv2.calcOpticalFlowFarneback(first, second, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        magnitudes.append(float(np.linalg.norm(flow, axis=2).mean()) * scale)
    return float(np.mean(magnitudes))


def _luma(frame: np.ndarray) -> np.ndarray:
    return frame if frame.ndim == 2 else to_gray(frame)


def motion_reasons(cfg: MotionConfig, score: float) -> list[str]:
    if score < cfg.min_score:
        return ["low_motion"]
    if score > cfg.max_score:
        return ["high_motion"]
    return []
