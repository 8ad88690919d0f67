"""Filter: sharpness as the variance of the Laplacian of the luma (MUG-V keeps [200, 2000])."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mugv.config import ConfigError
from mugv.video import sample_indices, to_gray


@dataclass
class SharpnessConfig:
    enabled: bool = True
    min_score: float = 200.0  # below: blurry
    max_score: float = 2000.0  # above: noise or heavy sharpening artifacts
    samples: int = 3  # evenly spaced frames averaged

    def validate(self) -> None:
        if not 0 <= self.min_score < self.max_score or self.samples < 1:
            raise ConfigError("sharpness needs 0 <= min_score < max_score and samples >= 1")


def sharpness_score(cfg: SharpnessConfig, frames: np.ndarray) -> float:
    """Mean Laplacian variance of `samples` frames, at the analysis resolution."""
    picks = frames[sample_indices(0, len(frames), cfg.samples)]
    return float(np.mean([cv2.Laplacian(to_gray(f), cv2.CV_64F).var() for f in picks]))


def sharpness_reasons(cfg: SharpnessConfig, score: float) -> list[str]:
    if score < cfg.min_score:
        return ["blurry"]
    if score > cfg.max_score:
        return ["oversharp_or_noisy"]
    return []
