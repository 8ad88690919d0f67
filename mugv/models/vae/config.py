"""Sizes and presets of the MUG-V video VAE (MUGV-SPEC section 3).

The VAE is two cascaded stages: a per-frame SDXL-shaped 2D autoencoder truncated after its
mid-blocks (``spatial_*`` fields) and a 3D-conv autoencoder over independent groups of
``temporal_factor`` frames (``temporal_*`` fields). Presets: ``mugv`` (the published size),
``tiny`` (a few hundred thousand parameters, trainable on a CPU in minutes) and ``tiny-shortcut``
(``tiny`` plus the temporal shortcut, the demo's).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mugv.errors import MugvError

# Per-channel latent statistics of the published VAE, used as `(z - mean) / std`.
MUGV_LATENT_MEAN = (
    -0.0194091796875, 0.09619140625, -0.796875, 0.1591796875, -0.2578125, 0.359375,
    -0.3203125, -0.287109375, -0.0069580078125, 0.3046875, 0.310546875, -0.451171875,
    -0.1728515625, 0.369140625, 0.2177734375, -3.075599670410156e-05, 0.1630859375,
    -0.267578125, -0.1962890625, -0.1298828125, -0.28515625, -0.515625, 0.5859375, -0.34375,
)  # fmt: skip
MUGV_LATENT_STD = (
    0.8817, 0.6523, 0.9152, 1.2117, 3.3516, 0.7528, 0.8177, 0.8637, 0.9075, 2.8875, 0.8980,
    1.1202, 1.0003, 2.5163, 0.6652, 1.2573, 0.7279, 1.0777, 1.5159, 0.8680, 1.1859, 1.0484,
    2.4750, 1.5881,
)  # fmt: skip


class UnknownVAEPresetError(MugvError, ValueError):
    pass


@dataclass
class VAEConfig:
    family: str = "mugv-vae"  # the model family (mugv.models.registry)
    preset: str = "tiny"
    in_channels: int = 3
    # Spatial stage: diffusers AutoencoderKL shape. Each level but the last halves H and W.
    spatial_channels: tuple[int, ...] = (16, 32, 32, 32)
    spatial_layers_per_block: int = 1
    spatial_groups: int = 8
    # The spatial features are multiplied by this after encoding and divided before decoding.
    spatial_scale: float = 0.18215
    # Temporal stage: each level but the last halves the time axis.
    temporal_filters: int = 8
    temporal_multipliers: tuple[int, ...] = (1, 2, 2, 4)
    temporal_res_blocks: int = 1
    temporal_groups: int = 8
    # A linear path from a group's stacked spatial features to the latent mean and back, added to
    # the temporal encoder's mean and decoder's output (residual autoencoding, as DC-AE's
    # shortcuts). Fitted as a PCA of the features before the temporal half trains, the temporal
    # half starts as the best linear autoencoder and learns what a linear map misses. Not in the
    # published VAE.
    temporal_shortcut: bool = False
    latent_channels: int = 24
    # Latent normalisation `(z - mean) / std`; empty tuples mean 0 and 1 for every channel.
    latent_mean: tuple[float, ...] = ()
    latent_std: tuple[float, ...] = ()
    # Chunking in time: frames per encode chunk and latent frames per decode chunk (0: no chunks).
    # Zero padding goes to, and decode crops it from, the front of the last encode chunk.
    encode_chunk_frames: int = 48
    decode_chunk_latents: int = 6
    # Spatial tiling in pixels (0: off); neighbouring tiles overlap by `tile_overlap` pixels.
    tile_size: int = 0
    tile_overlap: int = 64
    # Frames per batch through the spatial stage when no gradients are needed (bounds memory).
    spatial_frame_batch: int = 16

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.spatial_channels) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** (len(self.temporal_multipliers) - 1)

    @property
    def spatial_latent_channels(self) -> int:
        return self.spatial_channels[-1]

    def latent_frames(self, num_frames: int) -> int:
        return -(-num_frames // self.temporal_factor)

    def validate(self) -> None:
        from mugv.errors import ConfigError

        def require(ok: bool, key: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"vae.{key} = {getattr(self, key)!r} {message}")

        require(len(self.spatial_channels) >= 1, "spatial_channels", "needs at least one level")
        require(len(self.temporal_multipliers) >= 2, "temporal_multipliers", "needs at least two levels")
        for c in self.spatial_channels:
            require(c % self.spatial_groups == 0, "spatial_channels", f"must be multiples of spatial_groups = {self.spatial_groups}")
        for m in self.temporal_multipliers:
            require(
                (self.temporal_filters * m) % self.temporal_groups == 0,
                "temporal_multipliers",
                f"times temporal_filters = {self.temporal_filters} must be multiples of temporal_groups = {self.temporal_groups}",
            )
        require(self.spatial_layers_per_block >= 1, "spatial_layers_per_block", "must be >= 1")
        require(self.temporal_res_blocks >= 1, "temporal_res_blocks", "must be >= 1")
        require(self.latent_channels >= 1, "latent_channels", "must be >= 1")
        for key in ("latent_mean", "latent_std"):
            require(len(getattr(self, key)) in (0, self.latent_channels), key, f"must have latent_channels = {self.latent_channels} values or none")
        require(all(s > 0 for s in self.latent_std), "latent_std", "must be > 0")
        require(
            self.encode_chunk_frames >= 0 and self.encode_chunk_frames % self.temporal_factor == 0,
            "encode_chunk_frames",
            f"must be 0 or a multiple of the temporal factor {self.temporal_factor}",
        )
        require(self.spatial_frame_batch >= 1, "spatial_frame_batch", "must be >= 1")
        require(self.decode_chunk_latents >= 0, "decode_chunk_latents", "must be >= 0")
        require(self.tile_size >= 0 and self.tile_size % self.spatial_factor == 0, "tile_size", f"must be 0 or a multiple of {self.spatial_factor}")
        require(
            self.tile_overlap >= 0 and self.tile_overlap % self.spatial_factor == 0,
            "tile_overlap",
            f"must be a multiple of {self.spatial_factor}",
        )
        if self.tile_size:
            require(self.tile_overlap < self.tile_size, "tile_overlap", f"must be smaller than tile_size = {self.tile_size}")

    @classmethod
    def from_preset(cls, name: str) -> "VAEConfig":
        if name not in VAE_PRESETS:
            raise UnknownVAEPresetError(f"unknown VAE preset '{name}'; known presets: {', '.join(VAE_PRESETS)}")
        return dataclasses.replace(VAE_PRESETS[name])


VAE_PRESETS: dict[str, VAEConfig] = {
    # The published MUG-V VAE: SDXL-VAE spatial half (PixArt-Sigma), 128-filter temporal half.
    "mugv": VAEConfig(
        preset="mugv",
        spatial_channels=(128, 256, 512, 512),
        spatial_layers_per_block=2,
        spatial_groups=32,
        temporal_filters=128,
        temporal_multipliers=(1, 2, 2, 4),
        temporal_res_blocks=4,
        temporal_groups=32,
        latent_mean=MUGV_LATENT_MEAN,
        latent_std=MUGV_LATENT_STD,
    ),
    # Same topology (8x8x8, 24 channels), narrow and shallow: trains on a CPU in minutes.
    "tiny": VAEConfig(preset="tiny"),
    # The tiny VAE with the temporal shortcut: the demo's, which keeps a square's corners.
    "tiny-shortcut": VAEConfig(preset="tiny-shortcut", temporal_shortcut=True),
}
