"""Fréchet distance between Gaussians fitted to features, and FVD: the distance between I3D
features of generated and reference videos, with the I3D network that StyleGAN-V ships as
TorchScript (`i3d_torchscript.pt`, Kinetics-400), read from a local file.

The network is called as StyleGAN-V calls it: a batch [B, 3, 16, 224, 224] in [-1, 1] (first 16
frames, shorter side scaled to 224 bilinearly, centre crop), `rescale=False, resize=False,
return_features=True`, giving [B, 400] logits-before-softmax features. FVD needs hundreds of
videos per side to mean anything (StyleGAN-V uses 2048); fewer give a biased, noisy number.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import scipy.linalg

from mugv.config import ConfigError
from mugv.eval.scores import OFFICIAL, NotMeasurable, SetMetric

FVD_FRAMES = 16
FVD_SIZE = 224


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of [N, D] features."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise NotMeasurable(f"a Fréchet distance needs at least 2 feature vectors, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """|mean_a - mean_b|^2 + Tr(cov_a + cov_b - 2 (cov_a cov_b)^(1/2))."""
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.all(np.isfinite(root)):  # singular product: nudge both as pytorch-fid does
        offset = np.eye(len(cov_a)) * 1e-6
        root = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    difference = mean_a - mean_b
    return float(difference @ difference + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(np.real(root)))


class I3dFeatures:
    """StyleGAN-V's I3D TorchScript file as a feature extractor for one video at a time."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        import torch

        if not Path(path).is_file():
            raise ConfigError(f"I3D TorchScript file not found: {path}")
        try:
            self.model = torch.jit.load(str(path), map_location=device).eval()
        except RuntimeError as exc:
            raise ConfigError(f"{path}: not a TorchScript file ({str(exc).splitlines()[0]})") from exc
        self.device = device

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """[400] features of uint8 RGB frames [T, H, W, 3] (T >= 16)."""
        import torch
        import torch.nn.functional as F

        if len(frames) < FVD_FRAMES:
            raise NotMeasurable(f"FVD needs {FVD_FRAMES} frames, the video has {len(frames)}")
        video = torch.from_numpy(np.ascontiguousarray(frames[:FVD_FRAMES])).permute(0, 3, 1, 2).float() / 255
        height, width = video.shape[-2:]
        scale = FVD_SIZE / min(height, width)
        size = (FVD_SIZE, math.ceil(width * scale)) if height < width else (math.ceil(height * scale), FVD_SIZE)
        video = F.interpolate(video, size=size, mode="bilinear", align_corners=False)
        top, left = (video.shape[-2] - FVD_SIZE) // 2, (video.shape[-1] - FVD_SIZE) // 2
        video = video[..., top : top + FVD_SIZE, left : left + FVD_SIZE]
        batch = (video.permute(1, 0, 2, 3)[None] * 2 - 1).to(self.device)  # [1, 3, T, 224, 224] in [-1, 1]
        with torch.no_grad():
            features = self.model(batch, rescale=False, resize=False, return_features=True)
        return features[0].double().cpu().numpy()


def fvd(generated: list[np.ndarray], reference: list[np.ndarray]) -> tuple[float, dict]:
    """FVD of two lists of per-video feature vectors."""
    generated = [f for f in generated if f is not None]
    value = frechet_distance(*gaussian(np.stack(generated)), *gaussian(np.stack(reference)))
    return value, {"generated_videos": len(generated), "reference_videos": len(reference)}


def fvd_metric(i3d_path: str | Path, reference: list[Path], device: str = "cpu") -> SetMetric:
    """FVD of the evaluated videos against the `reference` videos (decoded here, one at a time)."""
    from mugv.eval.suite import load_video

    if len(reference) < 2:
        raise ConfigError(f"FVD needs at least 2 reference videos, got {len(reference)}")
    extract = I3dFeatures(i3d_path, device)

    def collect(video) -> np.ndarray | None:
        try:
            return extract(video.frames)
        except NotMeasurable:
            return None

    def finish(generated: list[np.ndarray | None]) -> tuple[float, dict]:
        features = [collect(load_video(path)) for path in reference]
        return fvd(generated, [f for f in features if f is not None])

    return SetMetric(
        "fvd", OFFICIAL,
        f"FVD with StyleGAN-V's I3D ({Path(i3d_path).name}), 16 frames at 224 px, against the given reference set; "
        "only against runs with the same reference set and a similar number of videos", False,
        "Fréchet distance between Gaussians of I3D features of the generated and the reference videos",
        collect, finish)
