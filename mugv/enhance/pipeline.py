"""The enhancer's inference (ENHANCER-SPEC §3): SDEdit at sigma 0.3 with one Euler flow step.

    z0 = normalised VAE mean of the video      zt = (1 - s) z0 + s eps,  zt[frame 0] = z0[frame 0]
    v  = v- + cfg (v+ - v-),  v± = DiT([zt; z0], t = 1000 s, t = 0 on frame 0's tokens, text±)
    z  = zt - s v,  z[frame 0] = z0[frame 0]   ->   frames = VAE.decode(z)

The first latent frame is the clean input's throughout, so output frame 0 is the VAE
reconstruction of input frame 0, never enhanced. `steps` > 1 takes Euler steps on
linspace(sigma, 0, steps + 1), which the release never does (it always takes one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mugv.enhance.config import CFG_SCALE, SIGMA
from mugv.enhance.text import TEXT_LEN, UMT5PromptEncoder
from mugv.utils.device import visiting


@dataclass
class EnhanceSettings:
    sigma: float = SIGMA
    steps: int = 1
    cfg_scale: float = CFG_SCALE
    seed: int = 0


def fit_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (PIL bilinear) so the frames cover height x width, then center-crop, as the
    release's loader does: scale max(W/w, H/h), sizes rounded, crop offsets rounded."""
    from PIL import Image

    h, w = frames.shape[1:3]
    scale = max(width / w, height / h)
    new_h, new_w = round(h * scale), round(w * scale)
    top, left = round((new_h - height) / 2.0), round((new_w - width) / 2.0)
    out = np.empty((len(frames), height, width, 3), np.uint8)
    for i, frame in enumerate(frames):
        image = Image.fromarray(np.ascontiguousarray(frame))
        if (new_h, new_w) != (h, w):
            image = image.resize((new_w, new_h), Image.BILINEAR)
        out[i] = np.asarray(image)[top:top + height, left:left + width]
    return out


def frames_to_video(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (1, 3, T, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(255.0)
    return ((x - 0.5) / 0.5).permute(3, 0, 1, 2).unsqueeze(0)


def video_to_frames(video: torch.Tensor) -> np.ndarray:
    """(1, 3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3), truncating as the release does."""
    x = ((video[0].float().permute(1, 2, 3, 0) + 1) * 127.5).clamp(0, 255)
    return x.cpu().numpy().astype(np.uint8)


def dit_velocity(dit: nn.Module, zt: torch.Tensor, condition: torch.Tensor, timesteps: torch.Tensor,
                 context: torch.Tensor) -> torch.Tensor:
    """The Wan DiT's velocity (float32, differentiable) for latents `zt` (B, 16, F, h, w) given the
    low-quality latents `condition` (same shape), per-sample `timesteps` (B,) on the 0-1000 scale
    and prompt states `context` (B, tokens, D), zero-padded here to 512 rows as the release does.
    The tokens of latent frame 0 get timestep 0: that frame is clean."""
    batch, _, frames, height, width = zt.shape
    p_t, p_h, p_w = dit.config.patch_size
    frame_tokens = (height // p_h) * (width // p_w)
    per_token = timesteps.float().view(batch, 1).expand(batch, (frames // p_t) * frame_tokens).clone()
    per_token[:, :frame_tokens] = 0.0
    padded = context.new_zeros(batch, TEXT_LEN, context.shape[2])
    padded[:, : min(context.shape[1], TEXT_LEN)] = context[:, :TEXT_LEN]
    return dit(torch.cat([zt, condition], dim=1), per_token, padded, return_dict=False)[0].float()


def latent_normalisation(vae: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel (mean, std) that normalise the VAE's latents, shaped (1, z, 1, 1, 1), float32."""
    z_dim = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, z_dim, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, z_dim, 1, 1, 1)
    return mean, std


def cast_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`model` in `dtype`, except the submodules diffusers keeps in float32 (`_keep_in_fp32_modules`:
    the Wan DiT's RoPE, time embedder, norms and modulation tables), as `from_pretrained` does."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not keep & set(name.split(".")):
            tensor.data = tensor.data.to(dtype)
    return model


class VideoEnhancer:
    """The DiT (`wan-dit`, weights merged), VAE (`wan-vae`) and umT5 prompt encoder on one device.
    With `offload` each stays on the CPU except while it runs; `tiled_decode` decodes the latents
    in overlapping spatial tiles (less memory; the release decodes whole frames)."""

    def __init__(self, dit: nn.Module, vae: nn.Module, text: UMT5PromptEncoder, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, offload: bool = False, tiled_decode: bool = False):
        self.device, self.dtype, self.offload, self.tiled_decode = torch.device(device), dtype, offload, tiled_decode
        self.dit, self.vae, self.text = cast_model(dit, dtype), cast_model(vae, dtype), text
        home = "cpu" if offload else self.device
        for module in (self.dit, self.vae, self.text.model):
            module.to(home)
        self.latents_mean, self.latents_std = latent_normalisation(vae)

    def _using(self, module: nn.Module):
        return visiting(module, self.device, self.offload)

    @torch.no_grad()
    def encode_prompts(self, *prompts: str) -> list[torch.Tensor]:
        with self._using(self.text.model):
            return [self.text.encode(p).cpu() for p in prompts]

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(1, 3, T, H, W) in [-1, 1] -> normalised latents (1, 16, F, H/8, W/8) float32 (posterior mean)."""
        with self._using(self.vae):
            mean = self.vae.encode(video.to(self.device, self.dtype)).latent_dist.mean.float()
        return (mean - self.latents_mean.to(mean.device)) / self.latents_std.to(mean.device)

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> (1, 3, T, H, W) float32 in [-1, 1]."""
        z = z.to(self.device) * self.latents_std.to(self.device) + self.latents_mean.to(self.device)
        with self._using(self.vae):
            self.vae.use_tiling = self.tiled_decode
            try:
                return self.vae.decode(z.to(self.dtype)).sample.float().clamp(-1, 1)
            finally:
                self.vae.use_tiling = False

    @torch.no_grad()
    def velocity(self, zt: torch.Tensor, condition: torch.Tensor, timestep: float, text: torch.Tensor) -> torch.Tensor:
        """The DiT's flow velocity (float32) for latents `zt` (1, 16, F, h, w) given the clean
        low-quality latents `condition` and one prompt's token states `text` (tokens, D)."""
        context = text[None].to(self.device, self.dtype)
        timesteps = torch.full((1,), float(timestep), device=self.device)
        return dit_velocity(self.dit, zt.to(self.device, self.dtype), condition.to(self.device, self.dtype),
                            timesteps, context)

    @torch.no_grad()
    def denoise(self, z0: torch.Tensor, noise: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                sigma: float = SIGMA, steps: int = 1, cfg_scale: float = CFG_SCALE,
                progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """The enhanced latents of clean latents `z0` (float32, on the device)."""
        z0, noise = z0.to(self.device).float(), noise.to(self.device).float()
        sigmas = torch.linspace(sigma, 0.0, steps + 1, dtype=torch.float32)
        clean_first = z0[:, :, :1]
        z = (1 - sigmas[0]) * z0 + sigmas[0] * noise
        z[:, :, :1] = clean_first
        with self._using(self.dit):
            for step in range(steps):
                t = float(sigmas[step] * 1000)
                v = self.velocity(z, z0, t, positive)
                if cfg_scale != 1.0:
                    v_negative = self.velocity(z, z0, t, negative)
                    v = v_negative + cfg_scale * (v - v_negative)
                z = z + v * (sigmas[step + 1] - sigmas[step])
                z[:, :, :1] = clean_first
                if progress is not None:
                    progress(1)
        return z

    def enhance(self, frames: np.ndarray, prompt: str, negative_prompt: str, settings: EnhanceSettings,
                progress: Callable[[int], None] = lambda _: None) -> np.ndarray:
        """uint8 (T, H, W, 3) frames, T = 4k + 1, sides multiples of 16 -> enhanced uint8 frames.
        `progress(1)` is called after each of `enhancer_stages(settings.steps)` stages."""
        positive, negative = self.encode_prompts(prompt, negative_prompt)
        progress(1)
        z0 = self.encode_video(frames_to_video(frames))
        progress(1)
        noise = torch.randn(z0.shape, generator=torch.Generator("cpu").manual_seed(settings.seed), dtype=torch.float32)
        z = self.denoise(z0, noise, positive, negative, settings.sigma, settings.steps, settings.cfg_scale, progress)
        frames = video_to_frames(self.decode_latents(z))
        progress(1)
        return frames


def enhancer_stages(steps: int) -> int:
    """Stages `VideoEnhancer.enhance` reports: the prompts, the VAE encode, each step, the decode."""
    return steps + 3
