"""VAE training loop: mixed video + image batches, saliency-weighted reconstruction, KL, optional
perceptual and late patch-GAN terms; optional stages that train the spatial half, then the
temporal half, alone before the whole VAE; checkpoints with exact resume; tqdm + TensorBoard;
sample reconstructions as mp4 and png.

Exact resume: batches and posterior noise are pure functions of (seed, step), and a checkpoint
holds the weights, the optimiser states and the step, so stopping after step k and resuming
gives the same weights as never stopping.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor

from mugv.config import ConfigError, to_toml
from mugv.models.vae.adapters import load_into, read_state_dict
from mugv.models.vae.model import DiagonalGaussian, MUGVideoVAE
from mugv.train.checkpoint import keep_last_checkpoints, list_checkpoints, load_tensor_file, publish, step_dir
from mugv.utils.determinism import seed_everything, use_deterministic_algorithms
from mugv.utils.device import resolve_device
from mugv.utils.seeds import derived_seed, held_out_seed
from mugv.vae_train.config import VAERunConfig
from mugv.vae_train.data import MediaPool
from mugv.vae_train.losses import (
    PatchDiscriminator,
    PerceptualLoss,
    discriminator_hinge_loss,
    generator_adversarial_loss,
    kl_loss,
    reconstruction_losses,
)
from mugv.video import write_mp4
from mugv.video.tensors import to_uint8

log = logging.getLogger(__name__)

# Batches whose spatial features the temporal shortcut is fitted to (VAEConfig.temporal_shortcut).
SHORTCUT_FIT_STEPS = 16


def training_stage(step: int, cfg: VAERunConfig) -> tuple[str, int, int]:
    """(name, first step, length) of the stage that `step` belongs to: "spatial", "temporal"
    (`cfg.stages`), then "joint" for the rest of `train.steps`."""
    spatial, temporal = cfg.stages.spatial_steps, cfg.stages.temporal_steps
    if step < spatial:
        return "spatial", 0, spatial
    if step < spatial + temporal:
        return "temporal", spatial, temporal
    return "joint", spatial + temporal, cfg.train.steps - spatial - temporal


def learning_rate_factor(step: int, cfg: VAERunConfig) -> float:
    """Within each stage: linear warm-up, then constant, cosine or linear decay to
    `min_lr_ratio` at the stage's last step."""
    _, first, length = training_stage(step, cfg)
    optim, step, total = cfg.optim, step - first, max(length, 1)
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - optim.warmup_steps) / max(total - optim.warmup_steps, 1))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if optim.schedule == "cosine" else 1.0 - progress
    return optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * shape


@dataclass
class StepResult:
    step: int
    losses: dict[str, float]


class VAETrainer:
    def __init__(self, cfg: VAERunConfig, media: MediaPool) -> None:
        self.cfg = cfg
        self.media = media
        self.device = resolve_device(cfg.train.device)
        use_deterministic_algorithms(cfg.train.deterministic)
        seed_everything(cfg.train.seed)
        self.model = MUGVideoVAE(cfg.model).to(self.device)
        if cfg.checkpoint.init_weights:
            report = load_into(self.model, read_state_dict(cfg.checkpoint.init_weights))
            log.info("initialised from %s\n%s", cfg.checkpoint.init_weights, report)
        else:
            with torch.no_grad():
                self.model.temporal.quant_conv.bias[cfg.model.latent_channels :] = cfg.loss.init_logvar
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=cfg.optim.lr,
            betas=cfg.optim.betas,
            eps=cfg.optim.eps,
            weight_decay=cfg.optim.weight_decay,
        )
        loss = cfg.loss
        self.perceptual = PerceptualLoss(loss.perceptual_weights).to(self.device) if loss.perceptual_weight > 0 else None
        self.discriminator: PatchDiscriminator | None = None
        self.disc_optimizer: torch.optim.Optimizer | None = None
        if loss.gan_weight > 0:
            self.discriminator = PatchDiscriminator(loss.gan_channels, loss.gan_layers, cfg.model.in_channels).to(self.device)
            self.disc_optimizer = torch.optim.AdamW(self.discriminator.parameters(), lr=loss.gan_lr, betas=(0.5, 0.9))
        precision = cfg.train.precision
        if precision == "bf16" and self.device.type != "cuda":
            # CPU bf16 Conv3d weight gradients come out sporadically huge (seen with torch 2.13).
            raise ConfigError("train.precision = 'bf16' needs a CUDA device; use 'fp32' or 'auto' on CPU")
        self.use_bf16 = precision == "bf16" or (
            precision == "auto" and self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        self.step = 0

    # ----- one step --------------------------------------------------------------------------

    def _batches(self, step: int) -> list[tuple[str, Tensor, float]]:
        data, seed = self.cfg.data, self.cfg.train.seed
        batches = []
        if data.video_batch_size:
            clips = self.media.video_batch(seed, step, data.video_batch_size, data.clip_frames, data.frame_stride)
            batches.append(("video", clips, 1.0))
        if data.image_batch_size:
            images = self.media.image_batch(seed, step, data.image_batch_size)
            batches.append(("image", images, self.cfg.loss.image_weight))
        return batches

    def _gan_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.cfg.loss.gan_start_step

    def train_step(self) -> StepResult:
        cfg, step = self.cfg, self.step
        self.model.train()
        lr = cfg.optim.lr * learning_rate_factor(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        noise = torch.Generator(device=self.device).manual_seed(derived_seed(cfg.train.seed, step))
        self.optimizer.zero_grad(set_to_none=True)
        logged: dict[str, float] = {"lr": lr}
        fakes: list[tuple[Tensor, Tensor]] = []
        total = 0.0
        stage = training_stage(step, cfg)[0]
        logged["stage"] = ("spatial", "temporal", "joint").index(stage)
        if self._starts_shortcut(step):
            logged["shortcut_variance_kept"] = self._fit_shortcut()
        for kind, batch, weight in self._batches(step):
            batch = batch.to(self.device)
            if stage == "temporal":
                terms = self._temporal_terms(batch, noise)
                loss = terms["feature_mse"] + cfg.loss.kl_weight * terms["kl"]
            else:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
                    if stage == "spatial":
                        recon = self.model.spatial_roundtrip(batch)
                    else:
                        recon, posterior = self.model(batch, sample=True, generator=noise)
                recon = recon.float()  # losses in fp32
                terms = reconstruction_losses(recon, batch, cfg.loss)
                loss = cfg.loss.mse_weight * terms["mse"] + cfg.loss.l1_weight * terms["l1"]
                if stage == "joint":
                    terms["kl"] = kl_loss(posterior, batch)
                    loss = loss + cfg.loss.kl_weight * terms["kl"]
                if self.perceptual is not None:
                    terms["perceptual"] = self.perceptual(recon, batch)
                    loss = loss + cfg.loss.perceptual_weight * terms["perceptual"]
                if stage == "joint" and self._gan_active(step):
                    assert self.discriminator is not None
                    self.discriminator.requires_grad_(False)
                    terms["gan_g"] = generator_adversarial_loss(self.discriminator(recon))
                    loss = loss + cfg.loss.gan_weight * terms["gan_g"]
                    fakes.append((batch, recon.detach()))
            (weight * loss).backward()
            total += float(weight * loss.detach())
            logged.update({f"{kind}/{k}": float(v.detach()) for k, v in terms.items()})
        if cfg.optim.grad_clip > 0:
            logged["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip))
        self.optimizer.step()
        if fakes:
            logged["gan_d"] = self._discriminator_step(fakes)
        logged["loss"] = total
        self.step += 1
        return StepResult(step=self.step, losses=logged)

    def _starts_shortcut(self, step: int) -> bool:
        """The temporal half starts from its fitted shortcut where it starts training on a trained
        spatial half: the first step after the spatial stage (never for loaded weights)."""
        return (
            self.model.temporal.shortcut is not None
            and not self.cfg.checkpoint.init_weights
            and self.cfg.stages.spatial_steps > 0
            and step == self.cfg.stages.spatial_steps
        )

    def _fit_shortcut(self) -> float:
        """PCA of the frozen spatial features of the stage's first `SHORTCUT_FIT_STEPS` batches;
        returns the variance fraction the latent keeps."""
        first = self.cfg.stages.spatial_steps
        with torch.no_grad():
            features = [
                self.model.spatial_features(batch.to(self.device)).float()
                for step in range(first, first + SHORTCUT_FIT_STEPS)
                for _, batch, _ in self._batches(step)
            ]
        kept = self.model.temporal.start_from_shortcut(features)
        log.info("temporal shortcut fitted: the latent keeps %.2f %% of the spatial features' variance", 100 * kept)
        return kept

    def _temporal_terms(self, batch: Tensor, noise: torch.Generator) -> dict[str, Tensor]:
        """The temporal half's loss on the frozen spatial half's features of `batch`: feature MSE
        relative to the features' mean square (scale-free), and the KL term."""
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            features = self.model.spatial_features(batch)
        features = features.float()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            posterior = DiagonalGaussian(self.model.temporal.encode(features))
            recon = self.model.temporal.decode(posterior.sample(noise)).float()
        return {
            "feature_mse": (recon - features).square().mean() / features.square().mean().clamp_min(1e-12),
            "kl": kl_loss(posterior, batch),
        }

    def _discriminator_step(self, pairs: list[tuple[Tensor, Tensor]]) -> float:
        assert self.discriminator is not None and self.disc_optimizer is not None
        self.discriminator.requires_grad_(True)
        self.disc_optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for real, fake in pairs:
            loss = discriminator_hinge_loss(self.discriminator(real), self.discriminator(fake))
            loss.backward()
            total += float(loss.detach())
        self.disc_optimizer.step()
        return total

    # ----- checkpoints -----------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        root = self.cfg.checkpoint_dir
        final = step_dir(root, self.step)
        partial = root / f".{final.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, partial / "model.safetensors")
        state = {"step": self.step, "optimizer": self.optimizer.state_dict()}
        if self.discriminator is not None and self.disc_optimizer is not None:
            state["discriminator"] = self.discriminator.state_dict()
            state["disc_optimizer"] = self.disc_optimizer.state_dict()
        torch.save(state, partial / "training_state.pt")
        (partial / "config.toml").write_text(to_toml(self.cfg))
        publish(partial, final)  # a checkpoint directory is complete (and on disk) or absent
        keep_last_checkpoints(root, self.cfg.checkpoint.keep_last)
        return final

    def load_checkpoint(self, directory: Path) -> None:
        self.model.load_state_dict(load_file(directory / "model.safetensors", device=str(self.device)))
        state = load_tensor_file(directory / "training_state.pt", map_location=self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.discriminator is not None and self.disc_optimizer is not None:
            if "discriminator" not in state:
                raise ValueError(f"{directory}: checkpoint has no discriminator but loss.gan_weight > 0")
            self.discriminator.load_state_dict(state["discriminator"])
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])
        self.step = int(state["step"])

    def resume_if_requested(self) -> Path | None:
        choice = self.cfg.checkpoint.resume
        if choice == "none":
            return None
        if choice == "auto":
            found = list_checkpoints(self.cfg.checkpoint_dir)
            if not found:
                return None
            directory = max(found)
        else:
            directory = Path(choice)
            if not (directory / "training_state.pt").is_file():
                raise FileNotFoundError(f"checkpoint.resume = {choice!r}: no training_state.pt there")
        self.load_checkpoint(directory)
        return directory

    # ----- samples ---------------------------------------------------------------------------

    @torch.no_grad()
    def write_samples(self) -> list[Path]:
        """Reconstruct fixed clips (and images) and write original | reconstruction side by side."""
        cfg = self.cfg
        out_dir = cfg.resolved_run_dir / "samples"
        out_dir.mkdir(parents=True, exist_ok=True)
        self.model.eval()
        written = []
        for index in range(cfg.samples.count):
            if self.media.videos:
                clip = self.media.video_batch(held_out_seed(cfg.train.seed), index, 1, cfg.data.clip_frames, cfg.data.frame_stride)
                recon = self.model(clip.to(self.device), sample=False)[0].cpu()
                pair = np.concatenate([to_uint8(clip[0]), to_uint8(recon[0])], axis=2)
                path = out_dir / f"step_{self.step:08d}_clip{index}.mp4"
                write_mp4(path, pair, fps=8.0)
                written.append(path)
            image = self.media.image_batch(held_out_seed(cfg.train.seed), index, 1)
            recon = self.model(image.to(self.device), sample=False)[0].cpu()
            pair = np.concatenate([to_uint8(image[0]), to_uint8(recon[0])], axis=2)[0]
            path = out_dir / f"step_{self.step:08d}_image{index}.png"
            Image.fromarray(pair).save(path)
            written.append(path)
        return written

    # ----- the loop --------------------------------------------------------------------------

    def fit(self) -> list[StepResult]:
        cfg = self.cfg
        run_dir = cfg.resolved_run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(to_toml(cfg))
        if self.media.rejections:
            with open(run_dir / "rejected_media.jsonl", "w") as f:
                for r in self.media.rejections:
                    f.write(json.dumps({"path": r.path, "reason": r.reason}) + "\n")
        resumed = self.resume_if_requested()
        if resumed is not None:
            log.info("resumed from %s at step %d", resumed, self.step)
        writer = _tensorboard(run_dir) if cfg.logging.tensorboard else None
        progress = _progress(cfg.train.steps, self.step, cfg.logging.progress)
        history = []
        try:
            while self.step < cfg.train.steps:
                result = self.train_step()
                history.append(result)
                if result.step % cfg.logging.every_steps == 0 or result.step == cfg.train.steps:
                    progress.set_postfix(loss=f"{result.losses['loss']:.4f}")
                    if writer is not None:
                        for key, value in result.losses.items():
                            writer.add_scalar(f"train/{key}", value, result.step)
                progress.update(1)  # after the postfix, so a progress line shows this step's loss
                if cfg.checkpoint.every_steps and result.step % cfg.checkpoint.every_steps == 0:
                    self.save_checkpoint()
                if cfg.samples.every_steps and result.step % cfg.samples.every_steps == 0:
                    self.write_samples()
            saved = list_checkpoints(cfg.checkpoint_dir)
            if not saved or saved[-1] != step_dir(cfg.checkpoint_dir, self.step):
                self.save_checkpoint()
            if cfg.samples.count:
                self.write_samples()
        finally:
            progress.close()
            if writer is not None:
                writer.close()
        return history



def _tensorboard(run_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tensorboard"))


def _progress(total: int, initial: int, enabled: bool):
    from mugv.utils.progress import progress_bar

    return progress_bar(total, initial=initial, enabled=enabled, desc="vae train", unit="step")
