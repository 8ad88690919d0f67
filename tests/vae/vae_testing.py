"""Helpers shared by the VAE tests."""

import dataclasses
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from mugv.models.vae import MUGVideoVAE, VAEConfig

TRAINED_TINY_WEIGHTS = Path(__file__).resolve().parents[1] / "golden" / "vae_tiny_trained_fp16.safetensors"


def clone_with(model: MUGVideoVAE, **changes) -> MUGVideoVAE:
    """Same weights, different config (chunking, tiling)."""
    other = MUGVideoVAE(dataclasses.replace(model.cfg, **changes)).eval()
    other.load_state_dict(model.state_dict())
    return other


def trained_tiny_vae() -> MUGVideoVAE:
    """The tiny flavor trained 1,200 CPU steps on real footage (docs/vae.md), in fp32."""
    model = MUGVideoVAE(VAEConfig.from_preset("tiny")).eval()
    model.load_state_dict({k: v.float() for k, v in load_file(TRAINED_TINY_WEIGHTS).items()})
    return model


def random_video(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((1, 3, frames, height, width), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def moving_square(frames: int, size: int, shift: int) -> np.ndarray:
    """uint8 (T, size, size, 3): colour gradients with a green square moving right."""
    video = np.zeros((frames, size, size, 3), np.uint8)
    y, x = np.mgrid[:size, :size]
    for t in range(frames):
        video[t, ..., 0] = (x * 255 // size).astype(np.uint8)
        video[t, ..., 2] = (y * 255 // size).astype(np.uint8)
        video[t, 8 : 8 + size // 4, (t * shift) % size : (t * shift) % size + size // 4, 1] = 255
    return video
