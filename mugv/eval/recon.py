"""Reconstruction metrics for video in [0, 1]: PSNR and SSIM (Wang et al. 2004: 11x11 Gaussian
window, sigma 1.5, K1 = 0.01, K2 = 0.03), computed per frame and averaged."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr", "ssim"]


def _frames(video: Tensor) -> Tensor:
    """(3, T, H, W) or (B, 3, T, H, W) -> (N, 3, H, W) frames, in float64 for stable sums."""
    if video.ndim == 4:
        video = video[None]
    if video.ndim != 5:
        raise ValueError(f"expected (B, C, T, H, W) or (C, T, H, W), got {tuple(video.shape)}")
    return video.transpose(1, 2).flatten(0, 1).double()


def psnr(recon: Tensor, target: Tensor) -> float:
    """Mean over frames of 10 log10(1 / MSE), values in [0, 1]; identical frames count 100 dB."""
    a, b = _frames(recon), _frames(target)
    mse = (a - b).square().flatten(1).mean(dim=1)
    return float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean())


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(recon: Tensor, target: Tensor) -> float:
    """Mean SSIM over frames and channels, values in [0, 1], valid (unpadded) windows."""
    a, b = _frames(recon), _frames(target)
    channels = a.shape[1]
    size = min(11, a.shape[-1], a.shape[-2])
    window = _gaussian_window(size).to(a.device).expand(channels, 1, size, size)

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x, window, groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(index.mean())
