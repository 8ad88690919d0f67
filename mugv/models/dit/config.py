"""MUG-DiT sizes, presets, parameter count and FLOP counter (MUGV-SPEC sections 1 and 5)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mugv.errors import MugvError

if TYPE_CHECKING:
    import torch


class UnknownPresetError(MugvError, ValueError):
    pass


@dataclass
class DiTConfig:
    family: str = "mug-dit"  # the model family (mugv.models.registry)
    preset: str = "debug"
    depth: int = 2
    hidden_size: int = 288
    num_heads: int = 4
    mlp_ratio: float = 4.0
    in_channels: int = 24
    # The release predicts 2x the input channels and uses only the first half as the velocity.
    out_channels: int = 48
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 64
    max_text_tokens: int = 16
    qk_norm: bool = True
    rope_theta: float = 10000.0
    rope_time_positions: int = 480
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def patch_volume(self) -> int:
        t, h, w = self.patch_size
        return t * h * w

    def validate(self) -> None:
        from mugv.errors import ConfigError

        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size = {self.hidden_size} is not divisible by model.num_heads = {self.num_heads}"
            )
        if self.head_dim % 6:
            raise ConfigError(
                f"model head_dim = hidden_size / num_heads = {self.head_dim} must be divisible by 6 "
                "(3D RoPE splits it into h|w|t thirds of rotary pairs)"
            )
        if self.out_channels < self.in_channels:
            raise ConfigError(
                f"model.out_channels = {self.out_channels} must be >= model.in_channels = {self.in_channels}"
            )
        for name in ("depth", "text_dim", "max_text_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} = {getattr(self, name)} must be >= 1")

    @classmethod
    def from_preset(cls, name: str) -> "DiTConfig":
        if name not in PRESETS:
            raise UnknownPresetError(f"unknown model preset '{name}'; known presets: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name])

    @classmethod
    def from_weights(cls, state_dict: "dict[str, torch.Tensor]") -> "DiTConfig":
        """The config a MUG-DiT state dict (our / MUG-V names) was built with, read off its shapes;
        named after the preset it matches, if any."""
        try:
            hidden = state_dict["start_token"].numel()
            head_dim = state_dict["blocks.0.attn.q_norm.weight"].numel()
            patch = tuple(state_dict["x_embedder.proj.weight"].shape[2:])
            fields = dict(
                depth=sum(1 for k in state_dict if k.startswith("blocks.") and k.endswith(".scale_shift_table")),
                hidden_size=hidden,
                num_heads=hidden // head_dim,
                mlp_ratio=state_dict["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
                in_channels=state_dict["x_embedder.proj.weight"].shape[1],
                out_channels=state_dict["final_layer.linear.weight"].shape[0] // (patch[0] * patch[1] * patch[2]),
                patch_size=patch,
                text_dim=state_dict["y_embedder.y_proj.fc1.weight"].shape[1],
            )
        except KeyError as exc:
            raise ValueError(f"not MUG-DiT weights: tensor {exc} is missing") from exc
        matches = [p for p in PRESETS.values() if all(getattr(p, k) == v for k, v in fields.items())]
        base = matches[0] if matches else cls(preset="custom", max_text_tokens=300)
        if "y_embedder.y_embedding" in state_dict:
            fields["max_text_tokens"] = state_dict["y_embedder.y_embedding"].shape[0]
        return dataclasses.replace(base, **fields)

    # ---------------------------------------------------------------------------------------
    # Size and cost
    # ---------------------------------------------------------------------------------------

    def num_params(self) -> int:
        """Exact trainable parameter count of `MUGDiT(self)` (buffers excluded)."""
        h, f, c = self.hidden_size, self.mlp_hidden, self.text_dim
        d = self.head_dim
        block = (
            (h * 3 * h + 3 * h) + 2 * d + (h * h + h)  # self-attention: qkv, q/k norm, proj
            + 2 * h  # cross-attention pre-norm (affine)
            + (h * h + h) + (h * 2 * h + 2 * h) + 2 * d + (h * h + h)  # cross q, kv, norms, proj
            + (h * f + f) + (f * h + h)  # MLP
            + 6 * h  # per-block modulation table
        )
        embed = (
            self.in_channels * self.patch_volume * h + h  # patch embed
            + 2 * ((256 * h + h) + (h * h + h))  # timestep and fps embedders
            + (h * 6 * h + 6 * h)  # shared adaLN-single projection
            + (c * h + h) + (h * h + h)  # text embedder
            + 2 * h  # start / end tokens
            + 2 * h + (h * self.patch_volume * self.out_channels + self.patch_volume * self.out_channels)
        )
        return self.depth * block + embed

    def num_tokens(self, latent_frames: int, latent_height: int, latent_width: int) -> int:
        """Video tokens of a latent (patch padding included) plus the start and end tokens."""
        pt, ph, pw = self.patch_size
        grid = -(-latent_frames // pt) * -(-latent_height // ph) * -(-latent_width // pw)
        return grid + 2

    def forward_flops(self, latent_frames: int, latent_height: int, latent_width: int, text_tokens: int) -> int:
        """Model FLOPs of one forward pass for one sample (2 per multiply-add).

        Attention is counted over the real token count (video tokens + 2) and the real number of
        text tokens; activation recompute is not counted (model FLOPs, as MFU requires).
        """
        h, f = self.hidden_size, self.mlp_hidden
        s = self.num_tokens(latent_frames, latent_height, latent_width)
        c = text_tokens
        per_block = (
            2 * s * h * 3 * h  # qkv
            + 4 * s * s * h  # q k^T and attention x v
            + 2 * s * h * h  # proj
            + 2 * s * h * h  # cross q
            + 2 * c * h * 2 * h  # cross kv
            + 4 * s * c * h  # cross attention
            + 2 * s * h * h  # cross proj
            + 2 * s * h * f * 2  # MLP
        )
        video = s - 2
        outer = (
            2 * video * self.in_channels * self.patch_volume * h  # patch embed
            + 2 * c * (self.text_dim * h + h * h)  # text embedder
            + 2 * video * h * self.patch_volume * self.out_channels  # final projection
        )
        return self.depth * per_block + outer

    def train_flops(self, latent_frames: int, latent_height: int, latent_width: int, text_tokens: int) -> int:
        """Forward + backward (3x forward) model FLOPs per sample."""
        return 3 * self.forward_flops(latent_frames, latent_height, latent_width, text_tokens)

    def megatron_train_flops(self, latent_frames: int, latent_height: int, latent_width: int, text_tokens: int) -> int:
        """The release's MFU formula (MUGV-SPEC section 5), without recompute, for comparison."""
        h = self.hidden_size
        s = latent_frames * latent_height * latent_width // 4
        c = text_tokens
        return int(12 * s * self.depth * h * h * ((1 + 1 + s / h) + (1 + c / s + c / h) + 4))


def _mugv_size(depth: int, hidden: int, heads: int) -> DiTConfig:
    return DiTConfig(depth=depth, hidden_size=hidden, num_heads=heads, text_dim=4096, max_text_tokens=300)


PRESETS: dict[str, DiTConfig] = {
    "debug": DiTConfig(preset="debug"),
    "1b": dataclasses.replace(_mugv_size(56, 1152, 16), preset="1b"),
    "2b": dataclasses.replace(_mugv_size(56, 1728, 24), preset="2b"),
    "4b": dataclasses.replace(_mugv_size(56, 2304, 32), preset="4b"),
    "10b": dataclasses.replace(_mugv_size(56, 3456, 48), preset="10b"),
    "18b": dataclasses.replace(_mugv_size(56, 4608, 64), preset="18b"),
}


def latent_shape_for_pixels(frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Latent (frames, height, width) of the 8x8x8 VAE for a pixel clip; 1 + 8k frames -> 1 + k."""
    if frames < 1 or height < 8 or width < 8:
        raise ValueError(f"clip {frames}x{height}x{width} is too small for the 8x8x8 VAE")
    latent_frames = 1 + (frames - 1) // 8 if frames % 8 == 1 else -(-frames // 8)
    return latent_frames, height // 8, width // 8
