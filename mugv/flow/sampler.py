"""Euler sampling of the flow ODE, with classifier-free guidance and frame conditioning."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# velocity_fn(z, sigma) -> velocity, with sigma a (B,) tensor of noise levels in [0, 1].
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class CFGVelocity:
    """Classifier-free guidance: v = v_uncond + scale (v_cond - v_uncond), from one doubled batch.

    `model_fn(z, sigma, cond)` runs the network on a batch; `cond` and `uncond` are whatever
    conditioning the network takes (e.g. prompt and negative-prompt embeddings), already batched
    so that `combine(cond, uncond)` gives the doubled batch [cond; uncond].
    """

    model_fn: Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]
    cond: object
    uncond: object
    scale: float
    combine: Callable[[object, object], object]

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0:
            return self.model_fn(z, sigma, self.cond)
        both = self.model_fn(torch.cat([z, z]), torch.cat([sigma, sigma]), self.combine(self.cond, self.uncond))
        v_cond, v_uncond = both.chunk(2)
        return v_uncond + self.scale * (v_cond - v_uncond)


def euler_sample(
    velocity_fn: VelocityFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond_latents: torch.Tensor | None = None,
    frame_mask: torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Integrate from sigmas[0] (noise) to sigmas[-1] (data): z += v (sigma_i - sigma_{i+1}).

    noise: (B, C, T, H, W). With `frame_mask` (B, T) False for conditioning frames, those frames
    start as, and are reset after every step to, `cond_latents`.
    """
    conditioned = frame_mask is not None
    if conditioned:
        if cond_latents is None:
            raise ValueError("frame_mask needs cond_latents: the clean latents of the conditioning frames")
        keep_clean = ~frame_mask.to(torch.bool)[:, None, :, None, None]
    z = torch.where(keep_clean, cond_latents.to(noise.dtype), noise) if conditioned else noise
    batch = noise.shape[0]
    for i in range(len(sigmas) - 1):
        sigma = torch.full((batch,), float(sigmas[i]), device=noise.device)
        v = velocity_fn(z, sigma)
        z = z + v.to(z.dtype) * float(sigmas[i] - sigmas[i + 1])
        if conditioned:
            z = torch.where(keep_clean, cond_latents.to(z.dtype), z)
        if progress is not None:
            progress(i)
    return z
