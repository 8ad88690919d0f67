"""Degraded copies of clean clips: the low-quality side of an enhancer's training pairs.

The release ships no training code (ENHANCER-SPEC §11.4). What its enhancer fixes is what
generated videos look like: soft detail, noise, compression and VAE artefacts. So a clean clip is
degraded by, in this order: a VAE round trip (the artefacts every generated video carries), a
Gaussian blur, a downscale and upscale, additive noise and JPEG compression of each frame. One
draw of strengths per clip, so the degradation is steady over time as in a generated video.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class DegradationConfig:
    blur_sigma: tuple[float, float] = (0.0, 1.5)  # pixels
    downscale: tuple[float, float] = (1.0, 3.0)  # factor of the down-up resize
    noise_std: tuple[float, float] = (0.0, 0.04)  # of the 0..1 range
    jpeg_quality: tuple[int, int] = (30, 95)

    def __post_init__(self):
        for name in ("blur_sigma", "downscale", "noise_std", "jpeg_quality"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"degradation {name}: low {low} > high {high}")
        if self.downscale[0] < 1 or not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError("degradation downscale must be >= 1 and jpeg_quality within 1..100")


@dataclass(frozen=True)
class Degradation:
    """One clip's strengths, drawn by `DegradationConfig.sample`."""

    blur_sigma: float
    downscale: float
    noise_std: float
    jpeg_quality: int


def sample_degradation(cfg: DegradationConfig, rng: np.random.Generator) -> Degradation:
    return Degradation(blur_sigma=float(rng.uniform(*cfg.blur_sigma)), downscale=float(rng.uniform(*cfg.downscale)),
                       noise_std=float(rng.uniform(*cfg.noise_std)),
                       jpeg_quality=int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)))


def degrade(frames: np.ndarray, how: Degradation, rng: np.random.Generator,
            vae_round_trip: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """uint8 (T, H, W, 3) -> a degraded uint8 copy of the same shape."""
    out = vae_round_trip(frames) if vae_round_trip is not None else frames
    height, width = out.shape[1:3]
    small = (max(1, round(width / how.downscale)), max(1, round(height / how.downscale)))
    degraded = np.empty_like(out)
    for i, frame in enumerate(out):
        x = frame
        if how.blur_sigma > 0:
            x = cv2.GaussianBlur(x, (0, 0), how.blur_sigma)
        if how.downscale > 1:
            x = cv2.resize(cv2.resize(x, small, interpolation=cv2.INTER_AREA), (width, height),
                           interpolation=cv2.INTER_CUBIC)
        if how.noise_std > 0:
            x = np.clip(x + rng.normal(0, how.noise_std * 255, x.shape), 0, 255).astype(np.uint8)
        if how.jpeg_quality < 100:
            ok, data = cv2.imencode(".jpg", x, [cv2.IMWRITE_JPEG_QUALITY, how.jpeg_quality])
            x = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if ok else x
        degraded[i] = x
    return degraded
