"""Reconstruction quality and speed of a VAE over a set of clips, and latent statistics.

Each file gives one clip: its first `frames` frames (images: one frame), resized to fill
`height` x `width` and center-cropped, exactly as training sees media.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mugv.eval.recon import psnr, ssim
from mugv.models.vae.model import MUGVideoVAE
from mugv.vae_train.data import MediaError, Rejection, discover, load_frames, to_model_range
from mugv.vae_train.losses import PerceptualLoss


@dataclass
class ClipResult:
    path: str
    frames: int
    psnr: float
    ssim: float
    encode_seconds: float
    decode_seconds: float
    lpips: float | None = None


@dataclass
class EvalReport:
    clips: list[ClipResult] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    peak_memory_gib: float = 0.0
    peak_memory_kind: str = ""

    @property
    def mean_psnr(self) -> float:
        return sum(c.psnr for c in self.clips) / len(self.clips)

    @property
    def mean_ssim(self) -> float:
        return sum(c.ssim for c in self.clips) / len(self.clips)

    @property
    def mean_lpips(self) -> float | None:
        values = [c.lpips for c in self.clips if c.lpips is not None]
        return sum(values) / len(values) if values else None

    @property
    def encode_fps(self) -> float:
        return sum(c.frames for c in self.clips) / sum(c.encode_seconds for c in self.clips)

    @property
    def decode_fps(self) -> float:
        return sum(c.frames for c in self.clips) / sum(c.decode_seconds for c in self.clips)

    def to_dict(self) -> dict:
        return {
            "clips": [asdict(c) for c in self.clips],
            "rejected": [asdict(r) for r in self.rejected],
            "mean_psnr": self.mean_psnr,
            "mean_ssim": self.mean_ssim,
            "mean_lpips": self.mean_lpips,
            "encode_frames_per_second": self.encode_fps,
            "decode_frames_per_second": self.decode_fps,
            "peak_memory_gib": self.peak_memory_gib,
            "peak_memory_kind": self.peak_memory_kind,
        }


def load_clips(sources: list[str], height: int, width: int, frames: int) -> tuple[list[tuple[str, torch.Tensor]], list[Rejection]]:
    """The usable clips of `sources` and the rejected files; a MediaError when none is usable."""
    clips, rejected = [], []
    for path in discover(sources):
        try:
            array, _ = load_frames(path, height, width, max_frames=frames)
        except ValueError as exc:
            rejected.append(Rejection(str(path), str(exc)))
            continue
        clips.append((str(path), to_model_range(array[None])))
    if not clips:
        reasons = "; ".join(r.reason for r in rejected[:5])
        raise MediaError(f"no usable clips in {sources}" + (f": {reasons}" if reasons else ""))
    return clips, rejected


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20), "process peak RSS"


@torch.no_grad()
def evaluate(
    model: MUGVideoVAE,
    sources: list[str],
    height: int,
    width: int,
    frames: int,
    sample: bool = False,
    lpips_weights: str = "",
) -> EvalReport:
    """PSNR and SSIM per clip (pixels in [0, 1]), LPIPS with local weights (VGG16 features and
    LPIPS heads, see :class:`PerceptualLoss`), encode and decode time, peak memory."""
    device = next(model.parameters()).device
    model.eval()
    clips, rejected = load_clips(sources, height, width, frames)
    lpips = PerceptualLoss(lpips_weights).to(device) if lpips_weights else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    report = EvalReport(rejected=rejected)
    for path, video in clips:
        video = video.to(device)
        _sync(device)
        start = time.perf_counter()
        z = model.encode(video, sample=sample, generator=torch.Generator(device=device).manual_seed(0))
        _sync(device)
        encoded = time.perf_counter()
        recon = model.decode(z, num_frames=video.shape[2])
        _sync(device)
        decoded = time.perf_counter()
        recon = recon.clamp(-1, 1)
        target01, recon01 = (video + 1) / 2, (recon + 1) / 2
        distance = float(lpips(recon, video)) if lpips is not None else None
        report.clips.append(
            ClipResult(
                path, video.shape[2], psnr(recon01, target01), ssim(recon01, target01),
                encoded - start, decoded - encoded, distance,
            )  # fmt: skip
        )
    report.peak_memory_gib, report.peak_memory_kind = _peak_memory(device)
    return report


@torch.no_grad()
def latent_statistics(
    model: MUGVideoVAE, sources: list[str], height: int, width: int, frames: int, sample: bool = True
) -> dict:
    """Per-channel mean and std of raw (unnormalised) latents over every latent element of every
    clip: the `latent_mean` / `latent_std` a newly trained VAE should normalise with. Posterior
    samples by default, since that is what the released encoder hands to the DiT."""
    device = next(model.parameters()).device
    model.eval()
    clips, rejected = load_clips(sources, height, width, frames)
    channels = model.cfg.latent_channels
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for index, (_, video) in enumerate(clips):
        posterior = model.encode_posterior(video.to(device))
        z = posterior.sample(torch.Generator(device=device).manual_seed(index)) if sample else posterior.mode()
        flat = z.double().transpose(0, 1).reshape(channels, -1).cpu()
        total += flat.sum(dim=1)
        total_sq += flat.square().sum(dim=1)
        count += flat.shape[1]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return {
        "latent_mean": [round(float(v), 6) for v in mean],
        "latent_std": [round(float(v), 6) for v in std],
        "clips": len(clips),
        "latent_elements_per_channel": count,
        "posterior": "sample" if sample else "mode",
        "rejected": [asdict(r) for r in rejected],
    }


def load_model(weights: str, config_model=None, device: str = "cpu") -> MUGVideoVAE:
    """A VAE from our checkpoint directory (its config.toml sets the size), or from a weights file
    of any layout with `config_model` giving the size."""
    from mugv.config import from_dict, load_profile_dict
    from mugv.models.vae.adapters import load_into, read_state_dict
    from mugv.vae_train.config import VAERunConfig

    path = Path(weights)
    if path.is_dir():
        if not (path / "model.safetensors").is_file():
            raise FileNotFoundError(f"{path}: not a VAE checkpoint directory (no model.safetensors)")
        if config_model is None:
            config_model = from_dict(VAERunConfig, load_profile_dict(str(path / "config.toml"))).model
        path = path / "model.safetensors"
    if config_model is None:
        raise ValueError(f"{path}: a weights file needs a model config (--preset or --config)")
    model = MUGVideoVAE(config_model)
    load_into(model, read_state_dict(path))
    return model.to(device)
