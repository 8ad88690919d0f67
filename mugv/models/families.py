"""The built-in model families: MUG-DiT and the MUG-V video VAE (mugv.models.registry)."""

from __future__ import annotations

import torch

from mugv.models.dit import adapters as dit_adapters
from mugv.models.dit.config import PRESETS, DiTConfig
from mugv.models.dit.model import MUGDiT
from mugv.models.registry import ModelFamily, register
from mugv.models.vae import adapters as vae_adapters
from mugv.models.vae.config import VAE_PRESETS, VAEConfig
from mugv.models.vae.model import MUGVideoVAE


def _vae_params(cfg: VAEConfig) -> int:
    with torch.device("meta"):
        return MUGVideoVAE(cfg).num_params()


MUG_DIT = register(ModelFamily(
    name="mug-dit", role="denoiser", config_cls=DiTConfig, build=MUGDiT, from_preset=DiTConfig.from_preset,
    presets=tuple(PRESETS), layouts=("mugv", "megatron"), read_weights=dit_adapters.read_weights,
    load_weights=dit_adapters.load_into, num_params=DiTConfig.num_params, train_flops=DiTConfig.train_flops,
))

MUGV_VAE = register(ModelFamily(
    name="mugv-vae", role="autoencoder", config_cls=VAEConfig, build=MUGVideoVAE, from_preset=VAEConfig.from_preset,
    presets=tuple(VAE_PRESETS), layouts=("ours", "mugv", "diffusers"), read_weights=vae_adapters.read_state_dict,
    load_weights=vae_adapters.load_into, num_params=_vae_params,
))
