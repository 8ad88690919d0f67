"""The MUG-V-compatible 8x8x8 video VAE: model, presets, checkpoint adapters, tiling."""

from mugv.models.vae.config import MUGV_LATENT_MEAN, MUGV_LATENT_STD, VAE_PRESETS, VAEConfig
from mugv.models.vae.model import DiagonalGaussian, MUGVideoVAE

__all__ = ["DiagonalGaussian", "MUGV_LATENT_MEAN", "MUGV_LATENT_STD", "MUGVideoVAE", "VAEConfig", "VAE_PRESETS"]
