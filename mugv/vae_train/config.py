"""Configuration of a VAE training run (`mugv vae train --config vae_tiny`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mugv.config import CheckpointConfig, ConfigError, LoggingConfig, OptimConfig, TrainConfig
from mugv.models.vae.config import VAEConfig


@dataclass
class VAEDataConfig:
    """Training media: folders (searched recursively), media files, or manifests (.txt with one
    path per line, .jsonl with a "path" field). Videos and images are both accepted."""

    sources: list[str] = field(default_factory=list)
    height: int = 64
    width: int = 64
    # Frames per training clip; 8k + 1 makes frame 0 its own latent frame, as for images.
    clip_frames: int = 9
    frame_stride: int = 1
    # Every step trains on a video sub-batch and an image sub-batch (0 turns either off). Images
    # come from image files, or from single video frames when there are none.
    video_batch_size: int = 1
    image_batch_size: int = 1
    # Frames kept in memory per video (decoded once); 0: all.
    max_frames_per_video: int = 256
    # Augmentation: media are kept at cache_scale x the training size and every clip is a random
    # window of it; optionally mirrored, and with its RGB channels in a random order.
    cache_scale: float = 1.0
    random_flip: bool = False
    permute_colors: bool = False

    def validate(self) -> None:
        for key in ("height", "width"):
            if getattr(self, key) < 8 or getattr(self, key) % 8:
                raise ConfigError(f"data.{key} = {getattr(self, key)} must be a positive multiple of 8")
        if self.clip_frames < 1:
            raise ConfigError(f"data.clip_frames = {self.clip_frames} must be >= 1")
        if self.frame_stride < 1:
            raise ConfigError(f"data.frame_stride = {self.frame_stride} must be >= 1")
        if self.video_batch_size < 0 or self.image_batch_size < 0 or not (self.video_batch_size or self.image_batch_size):
            raise ConfigError("data.video_batch_size and data.image_batch_size must be >= 0, not both 0")
        if self.cache_scale < 1.0:
            raise ConfigError(f"data.cache_scale = {self.cache_scale} must be >= 1")
        if self.max_frames_per_video < 0:
            raise ConfigError(f"data.max_frames_per_video = {self.max_frames_per_video} must be >= 0")


@dataclass
class VAELossConfig:
    """Loss = mse_weight * MSE + l1_weight * L1 (saliency-weighted) + kl_weight * KL
    + perceptual_weight * LPIPS-style distance + gan_weight * adversarial (from gan_start_step)."""

    mse_weight: float = 1.0
    l1_weight: float = 1.0
    # Weight the L1 by the temporal difference of the Laplacian (moving edges count more);
    # `saliency_floor` is the share of uniform weight kept so static regions still learn.
    saliency: bool = True
    saliency_floor: float = 0.1
    # KL to N(0, 1), summed over latent elements and divided by the number of pixel values.
    kl_weight: float = 1e-6
    # A model trained from scratch starts its posterior log-variance here (the quant conv's
    # bias), so that early latents carry signal rather than unit noise the decoder learns to
    # ignore. Not applied when starting from checkpoint.init_weights.
    init_logvar: float = -6.0
    # Weight of the image sub-batch's loss relative to the video sub-batch's.
    image_weight: float = 1.0
    perceptual_weight: float = 0.0
    perceptual_weights: str = ""  # local VGG16 (+ LPIPS heads) state dict; never downloaded
    gan_weight: float = 0.0
    gan_start_step: int = 0
    gan_channels: int = 64
    gan_layers: int = 3
    gan_lr: float = 1e-4

    def validate(self) -> None:
        for key in ("mse_weight", "l1_weight", "kl_weight", "image_weight", "perceptual_weight", "gan_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"loss.{key} = {getattr(self, key)} must be >= 0")
        if not 0.0 <= self.saliency_floor <= 1.0:
            raise ConfigError(f"loss.saliency_floor = {self.saliency_floor} must be within [0, 1]")
        if self.perceptual_weight > 0 and not self.perceptual_weights:
            raise ConfigError("loss.perceptual_weight > 0 needs loss.perceptual_weights, a local weights file")
        if self.perceptual_weights and not Path(self.perceptual_weights).is_file():
            raise ConfigError(f"loss.perceptual_weights = {self.perceptual_weights!r}: file not found")
        if self.gan_layers < 1 or self.gan_channels < 1:
            raise ConfigError("loss.gan_layers and loss.gan_channels must be >= 1")


@dataclass
class VAEStagesConfig:
    """Steps that train one half of the VAE alone before the whole VAE trains end to end (the
    rest of `train.steps`). From scratch, the deep and narrow temporal half slows the spatial half
    down when both learn together: on the demo's clips a tiny VAE reached 17 dB after 800 joint
    steps, and 24 dB after 300 spatial, 1000 temporal and 200 joint steps in less time. The
    release likewise built its temporal half on a trained spatial VAE.

    - `spatial_steps`: the per-frame 2D autoencoder alone, with the pixel losses.
    - `temporal_steps`: the temporal half alone, on the frozen spatial half's features, with a
      feature MSE relative to the features' mean square (plus the KL term).
    """

    spatial_steps: int = 0
    temporal_steps: int = 0

    def validate(self) -> None:
        for key in ("spatial_steps", "temporal_steps"):
            if getattr(self, key) < 0:
                raise ConfigError(f"stages.{key} = {getattr(self, key)} must be >= 0")


@dataclass
class VAESamplesConfig:
    """Reconstructions written during training: mp4 (original | reconstruction) and a png."""

    every_steps: int = 0  # 0: only at the end
    count: int = 1

    def validate(self) -> None:
        if self.every_steps < 0 or self.count < 0:
            raise ConfigError("samples.every_steps and samples.count must be >= 0")


@dataclass
class VAERunConfig:
    name: str = "vae_tiny"
    run_dir: str = ""  # empty: runs/<name>
    model: VAEConfig = field(default_factory=VAEConfig)
    data: VAEDataConfig = field(default_factory=VAEDataConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    samples: VAESamplesConfig = field(default_factory=VAESamplesConfig)
    stages: VAEStagesConfig = field(default_factory=VAEStagesConfig)

    def validate(self) -> None:
        staged = self.stages.spatial_steps + self.stages.temporal_steps
        if staged > self.train.steps:
            raise ConfigError(
                f"stages.spatial_steps + stages.temporal_steps = {staged} exceeds train.steps = {self.train.steps}"
            )
        f = self.model.spatial_factor
        if self.data.height % f or self.data.width % f:
            raise ConfigError(f"data.height and data.width must be multiples of the VAE's spatial factor {f}")

    @property
    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir) if self.checkpoint.dir else self.resolved_run_dir / "checkpoints"
