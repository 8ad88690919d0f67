"""Configs of the enhancer's two model families and the release's inference settings.

Sizes follow the MUG-V release (ENHANCER-SPEC §4.1, §7): the DiT is Wan2.1-T2V-1.3B plus a
second 16-channel patch embedding (the condition branch), the VAE is the Wan2.1 VAE. `debug`
presets are the tiny sizes the parity tests use (the release's code run at those sizes made the
golden tensors under tests/golden/enhancer_tiny_*).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mugv.errors import ConfigError


@dataclass(frozen=True)
class WanDiTConfig:
    family: str = "wan-dit"
    preset: str = "enhancer"
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    text_dim: int = 4096
    text_len: int = 512  # prompts are zero-padded to this many rows; no attention mask
    freq_dim: int = 256
    latent_channels: int = 16
    condition_channels: int = 16  # the second patch embedding (low-quality latents); 0: plain Wan T2V
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6

    def validate(self) -> None:
        for name in ("dim", "ffn_dim", "num_heads", "num_layers", "text_dim", "text_len", "freq_dim", "latent_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} = {getattr(self, name)!r} must be >= 1")
        if self.dim % self.num_heads:
            raise ConfigError(f"model.dim = {self.dim} must be a multiple of model.num_heads = {self.num_heads}")
        if self.condition_channels not in (0, self.latent_channels):
            raise ConfigError(f"model.condition_channels = {self.condition_channels} must be 0 (plain Wan T2V) or "
                              f"model.latent_channels = {self.latent_channels} (the low-quality latents)")

    @property
    def max_text_tokens(self) -> int:
        """Prompt rows the DiT attends to (zero-padded to this many)."""
        return self.text_len

    def train_flops(self, latent_frames: int, latent_height: int, latent_width: int, text_tokens: int) -> int:
        """Forward + backward (3x forward) matmul FLOPs per sample. The DiT attends to all
        `text_len` prompt rows (zero-padded), whatever `text_tokens` is."""
        p_t, p_h, p_w = self.patch_size
        s = (latent_frames // p_t) * (latent_height // p_h) * (latent_width // p_w)
        h, f, c = self.dim, self.ffn_dim, self.text_len
        per_block = (2 * s * h * 4 * h + 4 * s * s * h  # self attention: q, k, v, o and the scores
                     + 2 * s * h * 2 * h + 2 * c * h * 2 * h + 4 * s * c * h  # cross attention
                     + 2 * s * h * f * 2)  # FFN
        patch = p_t * p_h * p_w
        outer = (2 * s * (self.latent_channels + self.condition_channels) * patch * h
                 + 2 * c * (self.text_dim * h + h * h) + 2 * s * h * patch * self.latent_channels)
        return 3 * (self.num_layers * per_block + outer)

    @classmethod
    def from_preset(cls, name: str) -> WanDiTConfig:
        return _preset(WAN_DIT_PRESETS, name, "Wan DiT")

    def num_params(self) -> int:
        from mugv.enhance.families import count_params

        return count_params(self)


@dataclass(frozen=True)
class WanVAEConfig:
    family: str = "wan-vae"
    base_dim: int = 96
    z_dim: int = 16

    @classmethod
    def from_preset(cls, name: str) -> WanVAEConfig:
        return _preset(WAN_VAE_PRESETS, name, "Wan VAE")

    def num_params(self) -> int:
        from mugv.enhance.families import count_params

        return count_params(self)


WAN_DIT_PRESETS = {
    "enhancer": WanDiTConfig(),
    "debug": WanDiTConfig(preset="debug", dim=64, ffn_dim=96, num_heads=2, num_layers=2, text_dim=32),
}
WAN_VAE_PRESETS = {"wan2.1": WanVAEConfig(), "debug": WanVAEConfig(base_dim=8)}


def _preset(presets: dict, name: str, what: str):
    try:
        return dataclasses.replace(presets[name])
    except KeyError:
        raise ConfigError(f"unknown {what} preset {name!r}; known: {', '.join(presets)}") from None


# The release's settings (mug_enhancer/run.sh and predict.py).
HEIGHT, WIDTH, FRAMES = 1280, 720, 105
SIGMA = 0.3
CFG_SCALE = 2.0
LORA_ALPHA = 4.0  # run.sh passes --lora_rank 256 and leaves alpha at 4: scale 1/64
QUALITY_PROMPT = "高质量视频,HD,清晰,运动,电影,高清,high quality,cinema"
NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
