"""The rectified-flow objective with frame conditioning and caption dropout: the training default."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mugv.config import FlowConfig
from mugv.data.batch import LatentBatch
from mugv.flow import interpolate, per_sample_flow_loss, sample_sigmas, shift_ratio, shift_sigma, velocity_target
from mugv.models.dit.model import MUGDiT
from mugv.train.objectives.base import ObjectiveOutput, ReferenceMode


@dataclass
class ConditioningPolicy:
    """Per sample, which latent frames are given clean (one draw picks at most one kind) and how
    often the caption is replaced by the null text.

    first frame: image-to-video; last frame: generate toward an end frame; continuation: the
    first k frames (k uniform in 1..T-1) are given, as when extending a video.
    """

    first_frame_prob: float = 0.0
    last_frame_prob: float = 0.0
    continuation_prob: float = 0.0
    caption_dropout: float = 0.0

    def __post_init__(self) -> None:
        total = self.first_frame_prob + self.last_frame_prob + self.continuation_prob
        if total > 1.0 + 1e-9:
            raise ValueError(f"conditioning mask probabilities add up to {total:.3f} > 1")

    def frame_mask(self, batch: int, frames: int, generator: torch.Generator) -> torch.Tensor:
        """(B, T) bool, True for frames to generate."""
        kind = torch.rand(batch, generator=generator)
        cut = torch.randint(1, max(frames, 2), (batch,), generator=generator)
        mask = torch.ones(batch, frames, dtype=torch.bool)
        if frames == 1:
            return mask  # an image has nothing to condition on
        first = kind < self.first_frame_prob
        last = (kind >= self.first_frame_prob) & (kind < self.first_frame_prob + self.last_frame_prob)
        cont = (kind >= self.first_frame_prob + self.last_frame_prob) & (
            kind < self.first_frame_prob + self.last_frame_prob + self.continuation_prob
        )
        mask[first, 0] = False
        mask[last, -1] = False
        mask[cont] = torch.arange(frames)[None, :] >= cut[cont, None]
        return mask


@dataclass
class StepInputs:
    """Everything one training step feeds the model, drawn from the step's generator."""

    noisy: torch.Tensor
    sigma: torch.Tensor
    target: torch.Tensor
    frame_mask: torch.Tensor
    text: torch.Tensor
    text_mask: torch.Tensor
    sample_weight: torch.Tensor


class FlowMatchingObjective:
    """Velocity regression on the noised frames; needs no reference model."""

    name = "flow"
    reference = ReferenceMode.NONE

    def __init__(self, flow: FlowConfig, policy: ConditioningPolicy):
        self.flow = flow
        self.policy = policy

    def sigmas(self, batch: LatentBatch, generator: torch.Generator) -> torch.Tensor:
        flow = self.flow
        sigma = sample_sigmas(
            batch.size, generator=generator, kind=flow.timestep_sampling, mean=flow.logit_mean, std=flow.logit_std
        )
        if flow.shift:
            frames = batch.latents.shape[2] if flow.shift_frames == "latent" else flow.shift_fixed_frames
            frames = 1 if batch.latents.shape[2] == 1 else frames
            sigma = shift_sigma(sigma, shift_ratio(batch.pixel_height, batch.pixel_width, frames, flow.base_resolution))
        return sigma

    def prepare(self, model: MUGDiT, batch: LatentBatch, generator: torch.Generator) -> StepInputs:
        """Draw sigma, noise, conditioning frames and caption dropout (on the CPU generator)."""
        x0 = batch.latents
        b, _, frames, _, _ = x0.shape
        device = x0.device
        sigma = self.sigmas(batch, generator)
        noise = torch.randn(x0.shape, generator=generator).to(device=device, dtype=x0.dtype)
        frame_mask = self.policy.frame_mask(b, frames, generator).to(device)
        drop_caption = torch.rand(b, generator=generator) < self.policy.caption_dropout
        noisy = interpolate(x0, noise, sigma.to(device))
        noisy = torch.where(frame_mask[:, None, :, None, None], noisy, x0)

        text, text_mask = batch.text, batch.text_mask
        if drop_caption.any():
            null_text, null_mask = model.null_text(b)
            pad = null_text.shape[1] - text.shape[1]
            text = F.pad(text, (0, 0, 0, pad))
            text_mask = F.pad(text_mask, (0, pad))
            drop = drop_caption.to(device)
            text = torch.where(drop[:, None, None], null_text.to(text.dtype), text)
            text_mask = torch.where(drop[:, None], null_mask, text_mask)

        weight = self.flow.image_loss_weight if frames == 1 else 1.0
        return StepInputs(
            noisy=noisy,
            sigma=sigma.to(device),
            target=velocity_target(x0, noise),
            frame_mask=frame_mask,
            text=text,
            text_mask=text_mask,
            sample_weight=torch.full((b,), weight, device=device),
        )

    def predict(self, model, inputs: StepInputs, batch: LatentBatch) -> torch.Tensor:
        """The model's prediction for prepared inputs (the policy or, for preference objectives, a reference)."""
        return model(
            inputs.noisy,
            inputs.sigma * self.flow.num_train_timesteps,
            inputs.text,
            fps=batch.fps,
            text_mask=inputs.text_mask,
            frame_mask=inputs.frame_mask,
        )

    def compute(self, model: MUGDiT, batch: LatentBatch, generator: torch.Generator, reference=None) -> ObjectiveOutput:
        inputs = self.prepare(model, batch, generator)
        per_sample = per_sample_flow_loss(self.predict(model, inputs, batch), inputs.target, inputs.frame_mask)
        loss = (per_sample * inputs.sample_weight.to(per_sample.dtype)).mean()
        return ObjectiveOutput(loss=loss, per_sample=per_sample.detach())
