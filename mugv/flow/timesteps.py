"""Training timestep distribution, the resolution/length shift, and the sampling grid."""

from __future__ import annotations

import math
from typing import Literal

import torch


def sample_sigmas(
    batch: int,
    *,
    generator: torch.Generator | None = None,
    kind: Literal["logit_normal", "uniform"] = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Noise levels in (0, 1): sigmoid(N(mean, std)) for logit-normal, or U(0, 1)."""
    if kind == "logit_normal":
        u = torch.randn(batch, generator=generator, device=generator.device if generator else device)
        sigma = torch.sigmoid(mean + std * u)
    elif kind == "uniform":
        sigma = torch.rand(batch, generator=generator, device=generator.device if generator else device)
    else:
        raise ValueError(f"unknown timestep distribution {kind!r}")
    return sigma.to(device)


def shift_ratio(height: float, width: float, frames: float, base_resolution: float = 512 * 512) -> float:
    """sqrt(H W / base) * sqrt(frames), H and W in pixels; frames is 1 for an image."""
    if height <= 0 or width <= 0 or frames <= 0:
        raise ValueError(f"shift needs positive height, width and frames, got {height}, {width}, {frames}")
    return math.sqrt(height * width / base_resolution) * math.sqrt(frames)


def shift_sigma(sigma: torch.Tensor, ratio: float | torch.Tensor) -> torch.Tensor:
    """sigma' = r sigma / (1 + (r - 1) sigma): pushes sigma toward noise for large inputs (r > 1)."""
    return ratio * sigma / (1 + (ratio - 1) * sigma)


def sampling_sigmas(steps: int, ratio: float = 1.0) -> torch.Tensor:
    """steps + 1 decreasing noise levels from 1 to 0: the shifted grid 1 - i / steps, then 0."""
    if steps < 1:
        raise ValueError(f"sampling needs at least one step, got {steps}")
    grid = 1 - torch.arange(steps, dtype=torch.float64) / steps
    return torch.cat([shift_sigma(grid, ratio), torch.zeros(1, dtype=torch.float64)])
