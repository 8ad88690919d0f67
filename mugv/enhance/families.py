"""The enhancer's model families: `wan-dit` (diffusers' WanTransformer3DModel, its patch
embedding widened by the condition branch) and `wan-vae` (diffusers' AutoencoderKLWan)."""

from __future__ import annotations

import functools

import torch
from torch import nn

from mugv.enhance import adapters
from mugv.enhance.config import (
    WAN_DIT_PRESETS,
    WAN_VAE_PRESETS,
    WanDiTConfig,
    WanVAEConfig,
)
from mugv.models.registry import ModelFamily, register


def build_wan_dit(cfg: WanDiTConfig) -> nn.Module:
    from diffusers import WanTransformer3DModel

    if cfg.dim % cfg.num_heads:
        raise ValueError(f"Wan DiT dim {cfg.dim} is not a multiple of num_heads {cfg.num_heads}")
    return WanTransformer3DModel(
        patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.dim // cfg.num_heads,
        in_channels=cfg.latent_channels + cfg.condition_channels, out_channels=cfg.latent_channels,
        text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=cfg.eps, image_dim=None,
        added_kv_proj_dim=None, rope_max_seq_len=1024,
    ).eval()


def build_wan_vae(cfg: WanVAEConfig) -> nn.Module:
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=cfg.base_dim, z_dim=cfg.z_dim).eval()


def count_params(cfg: WanDiTConfig | WanVAEConfig) -> int:
    """Parameters of the module `cfg` builds (on the meta device: nothing is allocated). The
    DiT's count is the release's minus one bias: the two patch-embedding biases fold into one."""
    build = build_wan_dit if isinstance(cfg, WanDiTConfig) else build_wan_vae
    with torch.device("meta"):
        return sum(p.numel() for p in build(cfg).parameters())


WAN_DIT = register(ModelFamily(
    name="wan-dit", role="denoiser", config_cls=WanDiTConfig, build=build_wan_dit,
    from_preset=WanDiTConfig.from_preset, presets=tuple(WAN_DIT_PRESETS), layouts=("wan", "diffusers"),
    read_weights=adapters.read_weights, load_weights=adapters.load_dit, num_params=count_params,
    train_flops=WanDiTConfig.train_flops, load_init_weights=functools.partial(adapters.load_dit, zero_condition=True),
))

WAN_VAE = register(ModelFamily(
    name="wan-vae", role="autoencoder", config_cls=WanVAEConfig, build=build_wan_vae,
    from_preset=WanVAEConfig.from_preset, presets=tuple(WAN_VAE_PRESETS), layouts=("wan", "diffusers"),
    read_weights=adapters.read_weights, load_weights=adapters.load_vae, num_params=count_params,
))
