"""The enhancer's training objective: flow matching conditioned on the low-quality latents.

At inference the enhancer starts from the *low-quality* latents noised to sigma,
x = (1 - s) z_lq + s eps, and one Euler step x - s v must land on the clean latents z_hq. So the
velocity it learns is

    v* = (x - z_hq) / s = eps - z_hq + (1 - s) / s * (z_lq - z_hq)

which is exactly the flow-matching target eps - z_hq when the clip is not degraded. Sigma is
drawn near the inference sigma (0.3). As at inference, latent frame 0 is the low-quality clip's,
at timestep 0, and is left out of the loss (it is never enhanced). The release's recipe trains
LoRA (`WAN_LORA_TARGETS`) and the patch embedding that holds the condition branch
(`lora.train_modules`, configs/enhancer-lora.toml).
"""

from __future__ import annotations

import torch
from torch import nn

from mugv.data.pairs import LatentPairBatch
from mugv.enhance.pipeline import dit_velocity
from mugv.train.objectives.base import ObjectiveOutput, ReferenceMode

# The release's LoRA targets (q, k, v, o of both attentions, ffn.0, ffn.2) in diffusers' names.
WAN_LORA_TARGETS = ["blocks.*.attn1.to_q", "blocks.*.attn1.to_k", "blocks.*.attn1.to_v", "blocks.*.attn1.to_out.0",
                    "blocks.*.attn2.to_q", "blocks.*.attn2.to_k", "blocks.*.attn2.to_v", "blocks.*.attn2.to_out.0",
                    "blocks.*.ffn.net.0.proj", "blocks.*.ffn.net.2"]


def restoration_velocity(noised: torch.Tensor, clean: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The velocity whose Euler step from `noised` at `sigma` (B,) to 0 gives `clean`."""
    return (noised - clean) / sigma.view(-1, 1, 1, 1, 1)


class EnhancerFlowObjective:
    name = "enhancer_flow"
    reference = ReferenceMode.NONE
    policy = None

    def __init__(self, sigma_range: tuple[float, float] = (0.2, 0.4)):
        low, high = sigma_range
        if not 0 < low <= high <= 1:
            raise ValueError(f"enhancer sigma range {sigma_range} must satisfy 0 < low <= high <= 1")
        self.sigma_range = sigma_range

    def compute(self, model: nn.Module, batch: LatentPairBatch, generator: torch.Generator,
                reference: nn.Module | None = None) -> ObjectiveOutput:
        clean, degraded = batch.clean.float(), batch.degraded.float()
        size = clean.shape[0]
        low, high = self.sigma_range
        sigma = low + (high - low) * torch.rand(size, generator=generator, device=generator.device)
        sigma = sigma.to(clean.device)
        noise = torch.randn(clean.shape, generator=generator, device=generator.device).to(clean.device)
        s = sigma.view(-1, 1, 1, 1, 1)
        noised = (1 - s) * degraded + s * noise
        noised[:, :, :1] = degraded[:, :, :1]
        dtype = next(model.parameters()).dtype
        v = dit_velocity(model, noised.to(dtype), degraded.to(dtype), sigma * 1000, batch.text.to(dtype))
        target = restoration_velocity(noised, clean, sigma)
        per_sample = (v - target)[:, :, 1:].pow(2).flatten(1).mean(1)
        loss = per_sample.mean()
        return ObjectiveOutput(loss=loss, per_sample=per_sample.detach(),
                               metrics={"loss": float(loss.detach()), "sigma_mean": float(sigma.mean())})

