"""The MUG-V video VAE: 8x spatial, 8x temporal compression to 24 latent channels.

Pixels in [-1, 1], shape (B, 3, T, H, W). Two stages (MUGV-SPEC section 3):

1. :class:`SpatialAutoencoder`, per frame: an SDXL-VAE-shaped 2D encoder that stops after its
   mid-block (features multiplied by ``spatial_scale``) and a decoder that starts at its mid-block.
2. :class:`TemporalAutoencoder`: a 3D-conv encoder over independent groups of
   ``temporal_factor`` frames (one latent frame per group) and a 3D-conv decoder over whole
   latent chunks.

Time padding follows the release exactly (docs/vae.md has the table): a clip whose length is 1
mod 8 gets its first frame replicated 7 times at the front, so that frame 0 is its own group (an
image is one latent frame); any other length that is not a multiple of 8 is zero-padded (in
spatial-feature space) at the front of its last 48-frame encode chunk. `decode(z, num_frames)`
crops the padding where encoding put it, so output frame i reconstructs input frame i at every
length. That is the release's crop too, except for 1 mod 8 frames past one chunk (49, 57, ...,
105), where the release crops at the front of the last chunk instead and keeps the copies of
frame 0; `decode(z, num_frames, crop="release")` reproduces it.

Entry points: :meth:`MUGVideoVAE.forward` (training: whole clip, raw latents, posterior), and
:meth:`MUGVideoVAE.encode` / :meth:`MUGVideoVAE.decode` (inference: chunked in time, optionally
tiled in space, normalised latents).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mugv.models.vae.config import VAEConfig
from mugv.models.vae.tiling import blend_tiles, tile_spans

__all__ = ["DECODE_CROPS", "DiagonalGaussian", "MUGVideoVAE", "SpatialAutoencoder", "TemporalAutoencoder"]

SPATIAL_NORM_EPS = 1e-6  # diffusers AutoencoderKL
TEMPORAL_NORM_EPS = 1e-5  # nn.GroupNorm default, as the temporal stage was trained
# Where `decode(z, num_frames)` drops padding frames: where encoding put them, or where the
# release's decode does (they differ only at 1 mod 8 frames past one encode chunk).
DECODE_CROPS = ("aligned", "release")


class DiagonalGaussian:
    """Posterior N(mean, exp(logvar)) per latent element; logvar clamped to [-30, 20]."""

    def __init__(self, moments: Tensor) -> None:
        self.moments = moments
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL divergence to N(0, 1), summed over all but the batch dimension (in fp32)."""
        mean, logvar = self.mean.float(), self.logvar.float()
        per_element = mean.pow(2) + torch.exp(logvar) - 1.0 - logvar
        return 0.5 * per_element.flatten(1).sum(dim=1)


# --------------------------------------------------------------------------------------------
# Precision under autocast (mugv/models/vae/precision.py chooses it)
# --------------------------------------------------------------------------------------------


class GroupNorm32(nn.GroupNorm):
    """GroupNorm whose statistics are taken in float32 and whose output has the input's dtype.

    Under bf16 autocast a group's mean and variance span thousands of values; CUDA autocast runs
    `group_norm` in float32 but returns float32 (the next conv rounds it to bf16 anyway), CPU
    autocast runs it in bf16. This does the same on every device. Identical to nn.GroupNorm in
    float32."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def _float32(layers: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """`layers(x)` in float32 when autocast is on, as it is otherwise. For the layers whose
    rounding would reach the VAE's output unfiltered: the latent moments and the output pixels
    (cheap: few output channels)."""
    if not torch.is_autocast_enabled(x.device.type):
        return layers(x)
    with torch.autocast(x.device.type, enabled=False):
        return layers(x.float())


# --------------------------------------------------------------------------------------------
# Spatial stage (2D, per frame)
# --------------------------------------------------------------------------------------------


class ResBlock2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = GroupNorm32(groups, in_channels, eps=SPATIAL_NORM_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = GroupNorm32(groups, out_channels, eps=SPATIAL_NORM_EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.skip is None else self.skip(x)) + h


class SelfAttention2d(nn.Module):
    """Single-head self-attention over all positions of a frame, with a residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = GroupNorm32(groups, channels, eps=SPATIAL_NORM_EPS)
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x.flatten(2)).transpose(1, 2)  # (B, HW, C)
        q, k, v = (proj(tokens).unsqueeze(1) for proj in (self.q, self.k, self.v))
        attended = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        return x + self.out(attended).transpose(1, 2).reshape(b, c, h, w)


class MidBlock2d(nn.Module):
    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.res1 = ResBlock2d(channels, channels, groups)
        self.attn = SelfAttention2d(channels, groups)
        self.res2 = ResBlock2d(channels, channels, groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.res2(self.attn(self.res1(x)))


class DownLevel2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, groups: int, downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlock2d(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(num_blocks)
        )
        self.downsample = nn.Conv2d(out_channels, out_channels, 3, stride=2) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        if self.downsample is not None:
            # Pad right and bottom only, so that an even size halves exactly.
            x = self.downsample(F.pad(x, (0, 1, 0, 1)))
        return x


class UpLevel2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, groups: int, upsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlock2d(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(num_blocks)
        )
        self.upsample = nn.Conv2d(out_channels, out_channels, 3, padding=1) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        if self.upsample is not None:
            x = self.upsample(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class SpatialEncoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        channels = cfg.spatial_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, channels[0], 3, padding=1)
        self.levels = nn.ModuleList(
            DownLevel2d(
                channels[max(i - 1, 0)],
                channels[i],
                cfg.spatial_layers_per_block,
                cfg.spatial_groups,
                downsample=i < len(channels) - 1,
            )
            for i in range(len(channels))
        )
        self.mid = MidBlock2d(channels[-1], cfg.spatial_groups)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for level in self.levels:
            x = level(x)
        return self.mid(x)


class SpatialDecoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        channels = tuple(reversed(cfg.spatial_channels))
        self.mid = MidBlock2d(channels[0], cfg.spatial_groups)
        self.levels = nn.ModuleList(
            UpLevel2d(
                channels[max(i - 1, 0)],
                channels[i],
                cfg.spatial_layers_per_block + 1,
                cfg.spatial_groups,
                upsample=i < len(channels) - 1,
            )
            for i in range(len(channels))
        )
        self.norm_out = GroupNorm32(cfg.spatial_groups, channels[-1], eps=SPATIAL_NORM_EPS)
        self.conv_out = nn.Conv2d(channels[-1], cfg.in_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.mid(x)
        for level in self.levels:
            x = level(x)
        return _float32(lambda h: self.conv_out(F.silu(self.norm_out(h))), x)


class SpatialAutoencoder(nn.Module):
    """Per-frame 2D stage: (N, 3, H, W) pixels <-> (N, C, H/8, W/8) scaled features."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.scale = cfg.spatial_scale
        self.encoder = SpatialEncoder(cfg)
        self.decoder = SpatialDecoder(cfg)

    def encode(self, frames: Tensor) -> Tensor:
        return self.encoder(frames) * self.scale

    def decode(self, features: Tensor) -> Tensor:
        return self.decoder(features / self.scale)


# --------------------------------------------------------------------------------------------
# Temporal stage (3D)
# --------------------------------------------------------------------------------------------


class TimeDownsample3d(nn.Conv3d):
    """3x3x3 conv with stride 2 in time; time is padded (0, 1) so that T halves exactly."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, 3, stride=(2, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (1, 1, 1, 1, 0, 1)))


class ResBlock3d(nn.Module):
    """GroupNorm-SiLU-conv3x3x3 twice, bias-free convs; `upsample_time` first repeats frames 2x."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, upsample_time: bool = False) -> None:
        super().__init__()
        self.upsample_time = upsample_time
        self.norm1 = GroupNorm32(groups, in_channels, eps=TEMPORAL_NORM_EPS)
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = GroupNorm32(groups, out_channels, eps=TEMPORAL_NORM_EPS)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.skip = nn.Conv3d(in_channels, out_channels, 1, bias=False) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        if self.upsample_time:
            x = x.repeat_interleave(2, dim=2)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.skip is None else self.skip(x)) + h


class TemporalEncoder(nn.Module):
    """(N, C, 8, h, w) frame group -> (N, 2 * latent, 1, h, w) moments."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths = [cfg.temporal_filters * m for m in cfg.temporal_multipliers]
        groups, n = cfg.temporal_groups, cfg.temporal_res_blocks
        self.conv_in = nn.Conv3d(cfg.spatial_latent_channels, cfg.temporal_filters, 3, padding=1, bias=False)
        levels, previous = [], cfg.temporal_filters
        for width in widths:
            levels.append(nn.ModuleList(ResBlock3d(previous if j == 0 else width, width, groups) for j in range(n)))
            previous = width
        self.levels = nn.ModuleList(levels)
        self.downsample = nn.ModuleList(TimeDownsample3d(w) for w in widths[:-1])
        self.mid = nn.ModuleList(ResBlock3d(widths[-1], widths[-1], groups) for _ in range(n))
        self.norm_out = GroupNorm32(groups, widths[-1], eps=TEMPORAL_NORM_EPS)
        self.conv_out = nn.Conv3d(widths[-1], 2 * cfg.latent_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for i, level in enumerate(self.levels):
            for block in level:
                x = block(x)
            if i < len(self.downsample):
                x = self.downsample[i](x)
        for block in self.mid:
            x = block(x)
        return _float32(lambda h: self.conv_out(F.silu(self.norm_out(h))), x)


class TemporalDecoder(nn.Module):
    """(B, latent, n, h, w) -> (B, C, 8n, h, w). Time is upsampled 2x after the middle blocks
    (repeat), then 2x by depth-to-space after every level but the two lowest."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths = [cfg.temporal_filters * m for m in cfg.temporal_multipliers]
        groups, n = cfg.temporal_groups, cfg.temporal_res_blocks
        self.conv_in = nn.Conv3d(cfg.latent_channels, widths[-1], 3, padding=1)
        self.mid = nn.ModuleList(ResBlock3d(widths[-1], widths[-1], groups) for _ in range(n))
        self.mid_upsample = ResBlock3d(widths[-1], widths[-1], groups, upsample_time=True)
        # Levels are stored lowest first (like the encoder) but run highest first.
        levels = []
        for i, width in enumerate(widths):
            previous = widths[min(i + 1, len(widths) - 1)]
            levels.append(nn.ModuleList(ResBlock3d(previous if j == 0 else width, width, groups) for j in range(n)))
        self.levels = nn.ModuleList(levels)
        # upsample[i - 1] follows level i; level 1 keeps the frame count (mid_upsample did its 2x).
        self.upsample = nn.ModuleList(
            nn.Conv3d(w, 2 * w, 3, padding=1) if i >= 2 else nn.Identity() for i, w in enumerate(widths) if i >= 1
        )
        self.norm_out = GroupNorm32(groups, widths[0], eps=TEMPORAL_NORM_EPS)
        self.conv_out = nn.Conv3d(widths[0], cfg.spatial_latent_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.conv_in(z)
        for block in self.mid:
            x = block(x)
        x = self.mid_upsample(x)
        for i in reversed(range(len(self.levels))):
            for block in self.levels[i]:
                x = block(x)
            if i >= 1 and not isinstance(self.upsample[i - 1], nn.Identity):
                x = _depth_to_time(self.upsample[i - 1](x))
        return self.conv_out(F.silu(self.norm_out(x)))


def _drop_frames(x: Tensor, frames: slice) -> Tensor:
    """(B, C, T, H, W) without the frames in `frames`."""
    if frames.start == frames.stop:
        return x
    return torch.cat([x[:, :, : frames.start], x[:, :, frames.stop :]], dim=2)


def _depth_to_time(x: Tensor) -> Tensor:
    """(B, 2C, T, H, W) -> (B, C, 2T, H, W); channel 2c + k becomes frame 2t + k of channel c."""
    b, c2, t, h, w = x.shape
    return x.view(b, c2 // 2, 2, t, h, w).permute(0, 1, 3, 2, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)


def _stack_groups(features: Tensor, group: int) -> Tensor:
    """(B, C, T, h, w) -> (B, T / group, h, w, group * C): each position's features of one frame
    group side by side, frame-major."""
    b, c, t, h, w = features.shape
    return features.view(b, c, t // group, group, h, w).permute(0, 2, 4, 5, 3, 1).reshape(b, t // group, h, w, -1)


def _unstack_groups(stacked: Tensor, group: int) -> Tensor:
    """The inverse of :func:`_stack_groups`."""
    b, n, h, w, gc = stacked.shape
    return stacked.view(b, n, h, w, group, gc // group).permute(0, 5, 1, 4, 2, 3).reshape(b, gc // group, n * group, h, w)


class TemporalShortcut(nn.Module):
    """A linear map from a frame group's stacked features (group * C per position) to the latent
    mean and back (`VAEConfig.temporal_shortcut`). :meth:`fit` makes it the PCA of given
    features: the best linear autoencoder of them."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.group = cfg.temporal_factor
        stacked = cfg.temporal_factor * cfg.spatial_latent_channels
        self.down = nn.Linear(stacked, cfg.latent_channels)
        self.up = nn.Linear(cfg.latent_channels, stacked)

    def encode(self, features: Tensor) -> Tensor:
        """(B, C, T, h, w) -> (B, latent, T / group, h, w)."""
        return self.down(_stack_groups(features, self.group)).permute(0, 4, 1, 2, 3)

    def decode(self, z: Tensor) -> Tensor:
        """(B, latent, n, h, w) -> (B, C, group * n, h, w)."""
        return _unstack_groups(self.up(z.permute(0, 2, 3, 4, 1)), self.group)

    @torch.no_grad()
    def fit(self, features: Sequence[Tensor]) -> float:
        """Set both maps to the principal components of `features` (tensors (B, C, T, h, w), T a
        multiple of the group size) and return the fraction of their variance the latent keeps."""
        stacked = torch.cat([_stack_groups(f, self.group).flatten(0, 3) for f in features]).double()
        mean = stacked.mean(dim=0)
        _, singular, directions = torch.linalg.svd(stacked - mean, full_matrices=False)
        components = directions[: self.down.out_features]  # (latent, group * C)
        if components.shape[0] < self.down.out_features:
            raise ValueError(
                f"fitting the temporal shortcut needs at least {self.down.out_features} feature vectors, "
                f"got {stacked.shape[0]}"
            )
        self.down.weight.copy_(components)
        self.down.bias.copy_(-components @ mean)
        self.up.weight.copy_(components.T)
        self.up.bias.copy_(mean)
        variance = singular.square()
        return float(variance[: self.down.out_features].sum() / variance.sum().clamp_min(1e-30))


class TemporalAutoencoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.group = cfg.temporal_factor
        self.latent = latent = cfg.latent_channels
        self.encoder = TemporalEncoder(cfg)
        self.quant_conv = nn.Conv3d(2 * latent, 2 * latent, 1)
        self.post_quant_conv = nn.Conv3d(latent, latent, 1)
        self.decoder = TemporalDecoder(cfg)
        self.shortcut = TemporalShortcut(cfg) if cfg.temporal_shortcut else None

    def encode(self, features: Tensor) -> Tensor:
        """(B, C, T, h, w), T a multiple of the group size -> moments (B, 2 * latent, T / group, h, w).
        Every group of frames is encoded on its own."""
        b, c, t, h, w = features.shape
        n = t // self.group
        groups = features.view(b, c, n, self.group, h, w).transpose(1, 2).reshape(b * n, c, self.group, h, w)
        moments = _float32(self.quant_conv, self.encoder(groups)).view(b, n, -1, h, w).transpose(1, 2)
        if self.shortcut is None:
            return moments
        mean, logvar = moments.split(self.latent, dim=1)
        return torch.cat([mean + _float32(self.shortcut.encode, features).to(mean.dtype), logvar], dim=1)

    def decode(self, z: Tensor) -> Tensor:
        out = self.decoder(self.post_quant_conv(z))
        if self.shortcut is None:
            return out
        return out + _float32(self.shortcut.decode, z).to(out.dtype)

    @torch.no_grad()
    def start_from_shortcut(self, features: Sequence[Tensor]) -> float:
        """Fit the shortcut to `features` and silence the convolutional paths' outputs (zero last
        layers, which still learn), so that the temporal half starts as the PCA autoencoder of
        those features. Returns the variance fraction the latent keeps."""
        if self.shortcut is None:
            raise ValueError("start_from_shortcut needs VAEConfig.temporal_shortcut = true")
        kept = self.shortcut.fit(features)
        self.quant_conv.weight[: self.latent].zero_()
        self.quant_conv.bias[: self.latent].zero_()
        self.decoder.conv_out.weight.zero_()
        self.decoder.conv_out.bias.zero_()
        return kept


# --------------------------------------------------------------------------------------------
# The whole VAE
# --------------------------------------------------------------------------------------------


class MUGVideoVAE(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.spatial = SpatialAutoencoder(cfg)
        self.temporal = TemporalAutoencoder(cfg)
        c = cfg.latent_channels
        mean = torch.tensor(cfg.latent_mean or (0.0,) * c, dtype=torch.float32)
        std = torch.tensor(cfg.latent_std or (1.0,) * c, dtype=torch.float32)
        self.register_buffer("latent_mean", mean.view(1, c, 1, 1, 1))
        self.register_buffer("latent_std", std.view(1, c, 1, 1, 1))

    # ----- normalisation ---------------------------------------------------------------------

    def normalize(self, z: Tensor) -> Tensor:
        return (z - self.latent_mean.to(z.dtype)) / self.latent_std.to(z.dtype)

    def denormalize(self, z: Tensor) -> Tensor:
        return z * self.latent_std.to(z.dtype) + self.latent_mean.to(z.dtype)

    # ----- stages ----------------------------------------------------------------------------

    def _spatial_encode(self, video: Tensor) -> Tensor:
        """(B, 3, T, H, W) -> (B, C, T, H/8, W/8), frames in batches of `spatial_frame_batch`."""
        b, _, t, _, _ = video.shape
        frames = video.transpose(1, 2).flatten(0, 1)
        step = self.cfg.spatial_frame_batch
        feats = torch.cat([self.spatial.encode(frames[i : i + step]) for i in range(0, frames.shape[0], step)])
        return feats.view(b, t, *feats.shape[1:]).transpose(1, 2)

    def _spatial_decode(self, feats: Tensor) -> Tensor:
        b, _, t, _, _ = feats.shape
        flat = feats.transpose(1, 2).flatten(0, 1)
        step = self.cfg.spatial_frame_batch
        frames = torch.cat([self.spatial.decode(flat[i : i + step]) for i in range(0, flat.shape[0], step)])
        return frames.view(b, t, *frames.shape[1:]).transpose(1, 2)

    def _last_chunk_start(self, latent_frames: int) -> int:
        """First (padded) frame of the last `encode_chunk_frames` chunk of a clip that has
        `latent_frames` latent frames: where the release zero-pads and crops."""
        chunk = self.cfg.encode_chunk_frames
        if not chunk:
            return 0
        return chunk * ((latent_frames - 1) // (chunk // self.cfg.temporal_factor))

    def _padding(self, num_frames: int) -> slice:
        """The padding frames among the padded frames that encoding a clip of `num_frames` makes:
        copies of frame 0 at the front for 1 mod group, else zeros at the front of the last chunk."""
        group = self.cfg.temporal_factor
        if num_frames % group == 1:
            start = 0
        else:
            start = self._last_chunk_start(self.cfg.latent_frames(num_frames))
        return slice(start, start + (-num_frames % group))

    def _pad_time(self, feats: Tensor) -> Tensor:
        """Bring the frame count to a multiple of the group size, as the release does."""
        t = feats.shape[2]
        padding = self._padding(t)
        count = padding.stop - padding.start
        if count == 0:
            return feats
        if t % self.cfg.temporal_factor == 1:
            return torch.cat([feats[:, :, :1].expand(-1, -1, count, -1, -1), feats], dim=2)
        zeros = feats.new_zeros(feats.shape[0], feats.shape[1], count, *feats.shape[3:])
        return torch.cat([feats[:, :, : padding.start], zeros, feats[:, :, padding.start :]], dim=2)

    def spatial_features(self, video: Tensor) -> Tensor:
        """What the temporal half encodes: per-frame spatial features, padded in time to whole
        frame groups."""
        self._check_video(video)
        return self._pad_time(self._spatial_encode(video))

    def spatial_roundtrip(self, video: Tensor) -> Tensor:
        """Every frame through the spatial half alone (its own training stage)."""
        self._check_video(video)
        return self._spatial_decode(self._spatial_encode(video))

    def _check_video(self, video: Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != self.cfg.in_channels:
            raise ValueError(f"expected video (B, {self.cfg.in_channels}, T, H, W), got {tuple(video.shape)}")
        f = self.cfg.spatial_factor
        if video.shape[-2] % f or video.shape[-1] % f:
            raise ValueError(f"height and width must be multiples of {f}, got {tuple(video.shape[-2:])}")

    def encode_moments(self, video: Tensor) -> Tensor:
        """Raw posterior moments (B, 2 * latent, ceil(T / 8), H/8, W/8), in time chunks of
        `encode_chunk_frames` padded frames (groups are independent, so chunks only bound
        memory; the chunk length does decide where zero padding goes), untiled."""
        feats = self.spatial_features(video)
        chunk = self.cfg.encode_chunk_frames or feats.shape[2]
        chunks = [self.temporal.encode(feats[:, :, i : i + chunk]) for i in range(0, feats.shape[2], chunk)]
        return torch.cat(chunks, dim=2)

    def _decode_time(self, z: Tensor) -> Tensor:
        """Raw latents -> spatial features of all 8 frames per latent frame, in chunks of
        `decode_chunk_latents` latent frames (no overlap, as released)."""
        chunk = self.cfg.decode_chunk_latents or z.shape[2]
        return torch.cat([self.temporal.decode(z[:, :, i : i + chunk]) for i in range(0, z.shape[2], chunk)], dim=2)

    def decode_raw(self, z: Tensor, num_frames: int | None = None, crop: str = "aligned") -> Tensor:
        """Raw latents -> pixels, untiled; `num_frames` and `crop` as in :meth:`decode`."""
        dropped = slice(0, 0) if num_frames is None else self._crop(z.shape[2], num_frames, crop)
        return self._spatial_decode(_drop_frames(self._decode_time(z), dropped))

    def _crop(self, latent_frames: int, num_frames: int, crop: str) -> slice:
        """The decoded frames that `decode(z, num_frames, crop)` drops."""
        if crop not in DECODE_CROPS:
            raise ValueError(f"crop must be one of {', '.join(map(repr, DECODE_CROPS))}, not {crop!r}")
        self._check_frame_count(latent_frames, num_frames)
        if crop == "aligned":
            return self._padding(num_frames)
        start = self._last_chunk_start(latent_frames)
        return slice(start, start + latent_frames * self.cfg.temporal_factor - num_frames)

    def _check_frame_count(self, latent_frames: int, num_frames: int) -> None:
        group = self.cfg.temporal_factor
        decoded = latent_frames * group
        if not decoded - group < num_frames <= decoded:
            raise ValueError(
                f"{latent_frames} latent frames decode to {decoded - group + 1}..{decoded} frames, not {num_frames}"
            )

    # ----- training --------------------------------------------------------------------------

    def forward(
        self, video: Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[Tensor, DiagonalGaussian]:
        """Reconstruct a clip through raw (unnormalised) latents; returns (recon, posterior).
        The padding is cropped where encoding put it, as `decode(z, T)` crops it, so
        recon[:, :, i] reconstructs frame i."""
        posterior = DiagonalGaussian(self.encode_moments(video))
        z = posterior.sample(generator) if sample else posterior.mode()
        feats = _drop_frames(self._decode_time(z), self._padding(video.shape[2]))
        return self._spatial_decode(feats), posterior

    # ----- inference -------------------------------------------------------------------------

    def encode_posterior(self, video: Tensor) -> DiagonalGaussian:
        """Posterior over raw latents, spatially tiled when `tile_size` is set and exceeded."""
        tile, f = self.cfg.tile_size, self.cfg.spatial_factor
        if not tile or max(video.shape[-2:]) <= tile:
            return DiagonalGaussian(self.encode_moments(video))
        overlap = self.cfg.tile_overlap // f
        moments = blend_tiles(
            # Tiles are copied out: convolutions on strided views are several times slower.
            lambda rows, cols: self.encode_moments(
                video[..., rows.start * f : rows.stop * f, cols.start * f : cols.stop * f].contiguous()
            ),
            tile_spans(video.shape[-2] // f, tile // f, overlap),
            tile_spans(video.shape[-1] // f, tile // f, overlap),
            overlap,
        )
        return DiagonalGaussian(moments)

    def encode(self, video: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Pixels (B, 3, T, H, W) in [-1, 1] -> normalised latents (B, 24, ceil(T/8), H/8, W/8).
        `sample=True` draws from the posterior (what the release does); default is the mode."""
        posterior = self.encode_posterior(video)
        return self.normalize(posterior.sample(generator) if sample else posterior.mode())

    def decode(self, z: Tensor, num_frames: int | None = None, crop: str = "aligned") -> Tensor:
        """Normalised latents -> pixels. `num_frames` defaults to 8 per latent frame; any count
        the latents can hold (8n - 7 .. 8n for n latent frames) drops the 8n - num_frames padding
        frames. `crop="aligned"` drops them where encoding a clip of `num_frames` put them, so
        frame i of `decode(encode(x), T)` reconstructs frame i of x at every length.
        `crop="release"` drops them at the front of the last 48-frame chunk, as the release's
        decode does: the same crop except at 1 mod 8 frames past one chunk (49, 57, ..., 105),
        where it keeps the 7 copies of frame 0 and drops 7 real frames (docs/vae.md)."""
        raw = self.denormalize(z)
        tile, f = self.cfg.tile_size, self.cfg.spatial_factor
        if not tile or max(z.shape[-2:]) * f <= tile:
            return self.decode_raw(raw, num_frames, crop)
        overlap = self.cfg.tile_overlap // f
        return blend_tiles(
            lambda rows, cols: self.decode_raw(raw[..., rows, cols].contiguous(), num_frames, crop),
            tile_spans(z.shape[-2], tile // f, overlap),
            tile_spans(z.shape[-1], tile // f, overlap),
            overlap,
            scale=f,
        )

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        f = self.cfg.spatial_factor
        return (self.cfg.latent_channels, self.cfg.latent_frames(num_frames), height // f, width // f)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
