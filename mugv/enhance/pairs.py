"""An enhancer's training pairs: clean clips, their degraded copies, and the VAE that encodes both.

`mugv enhancer pairs` (mugv/commands/enhancer.py) renders the clips and calls these:

* `fit_vae` trains a (tiny) Wan VAE on the clean clips: first on single frames, where shape and
  colour are learned cheaply, then on whole clips for the causal temporal path. A random-weight
  VAE would make every pixel figure meaningless: the enhancer works on latents and can only ever
  be as good as the VAE's reconstruction of the clean clip. `prepare_vae_for_training` sets up
  the weights it starts from (see there for why).
* `fold_latent_normalisation` rescales its latent projections so that the pipeline's fixed
  per-channel normalisation (the Wan2.1 constants) yields zero-mean, unit-variance latents on
  these clips: the enhancer's noise at sigma 0.3 is then sized as it is for the released VAE.
* `make_pairs` degrades each clip (mugv.enhance.degrade, the VAE round trip first) and encodes
  both sides; `write_pair_set` stores the training pairs (mugv.data.pairs reads them), the VAE
  and the held-out pixel clips that `mugv enhancer eval` scores.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mugv.data.pairs import PAIRS_FILE
from mugv.enhance.degrade import DegradationConfig, degrade, sample_degradation
from mugv.enhance.pipeline import frames_to_video, latent_normalisation, video_to_frames

VAE_FILE = "vae.safetensors"
HELD_OUT_FILE = "held_out.safetensors"
INFO_FILE = "pairs.json"


def decoder_output(vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The decoder's output before `AutoencoderKLWan.decode` clamps it to [-1, 1]: a clamped
    output passes no gradient where it saturates, which stalls training from scratch."""
    outputs: list[torch.Tensor] = []
    hook = vae.decoder.register_forward_hook(lambda module, args, out: outputs.append(out))
    try:
        vae.decode(z)
    finally:
        hook.remove()
    return torch.cat(outputs, dim=2)


@torch.no_grad()
def prepare_vae_for_training(vae: nn.Module, video: torch.Tensor) -> None:
    """Starting weights of a Wan VAE trained from scratch on `video` (N, 3, T, H, W) in [-1, 1].

    * The output layer starts at the clips' mean colour with zero weights. Wan normalises features
      per pixel across channels (RMS norm), so the random variation of a fresh decoder cannot be
      shrunk, only aligned: fitting the mean colour made every pixel's features point one way and
      stalled training on a mean-colour plateau.
    * Every causal convolution starts as a per-frame one (the taps on earlier frames zero), the
      encoder's temporal downsampling as keeping a frame and the decoder's upsampling as repeating
      one. Single-frame steps never train those taps (they only see the causal zero padding), so
      random ones would garble whole clips; this way the single-frame stage already reconstructs
      clips frame by frame, and the whole-clip stage only learns the motion between frames."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanResample

    vae.decoder.conv_out.weight.zero_()
    vae.decoder.conv_out.bias.copy_(video.mean(dim=(0, 2, 3, 4)))
    resamplers = {m.time_conv for m in vae.modules() if isinstance(m, WanResample) and hasattr(m, "time_conv")}
    for conv in vae.modules():
        if not isinstance(conv, WanCausalConv3d) or conv.kernel_size[0] == 1:
            continue
        if conv in resamplers:  # out channels: one copy of the input per output frame
            conv.weight.zero_()
            conv.bias.zero_()
            for copy in range(conv.out_channels // conv.in_channels):
                rows = slice(copy * conv.in_channels, (copy + 1) * conv.in_channels)
                conv.weight[rows, :, -1, 0, 0] = torch.eye(conv.in_channels)
        else:
            conv.weight[:, :, :-1] = 0


def fit_vae(vae: nn.Module, clips: np.ndarray, image_steps: int, video_steps: int, *, lr: float = 3e-4,
            image_batch: int = 8, video_batch: int = 1, seed: int = 0,
            progress: Callable[[int], None] = lambda _: None) -> list[float]:
    """Train `vae` from `prepare_vae_for_training`'s start on uint8 clips (N, T, H, W, 3),
    T = 4k + 1, with an L1 + L2 reconstruction loss of its posterior mean: `image_steps` on single
    frames, then `video_steps` on whole clips, the learning rate decaying over both (cosine, to a
    tenth). Returns the losses; the VAE is left in eval mode."""
    video = torch.cat([frames_to_video(clip) for clip in clips])  # (N, 3, T, H, W) in [-1, 1]
    generator = torch.Generator().manual_seed(seed)
    prepare_vae_for_training(vae, video)
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(image_steps + video_steps, 1), eta_min=lr / 10)
    vae.train()
    losses = []
    for step in range(image_steps + video_steps):
        if step < image_steps:
            clip = torch.randint(0, len(video), (image_batch,), generator=generator)
            frame = torch.randint(0, video.shape[2], (image_batch,), generator=generator)
            x = video[clip, :, frame][:, :, None]
        else:
            x = video[torch.randint(0, len(video), (video_batch,), generator=generator)]
        y = decoder_output(vae, vae.encode(x).latent_dist.mean)
        loss = (y - x).abs().mean() + (y - x).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        progress(1)
    vae.eval()
    return losses


@torch.no_grad()
def fold_latent_normalisation(vae: nn.Module, clips: np.ndarray) -> None:
    """Make `(mean - latents_mean) / latents_std` zero-mean, unit-variance per channel on `clips`:
    the encoder's mean projection (quant_conv) is mapped affinely and the decoder's input
    projection (post_quant_conv) undoes it, so reconstructions do not change."""
    mean = torch.cat([vae.encode(frames_to_video(clip)).latent_dist.mean for clip in clips])
    z = mean.shape[1]
    data_mean, data_std = mean.mean(dim=(0, 2, 3, 4)), mean.std(dim=(0, 2, 3, 4)).clamp_min(1e-6)
    target_mean, target_std = (t.flatten() for t in latent_normalisation(vae))
    scale = target_std / data_std  # mu' = target_mean + scale (mu - data_mean)
    quant, post = vae.quant_conv, vae.post_quant_conv
    quant.weight[:z] *= scale.view(-1, 1, 1, 1, 1)
    quant.bias[:z] = (quant.bias[:z] - data_mean) * scale + target_mean
    # post(mu) = W mu + b with mu = data_mean + (mu' - target_mean) / scale
    w = post.weight[:, :, 0, 0, 0].clone()
    post.bias += w @ (data_mean - target_mean / scale)
    post.weight /= scale.view(1, -1, 1, 1, 1)


@torch.no_grad()
def encode(vae: nn.Module, frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> normalised latents (1, z, F, h, w), as the enhancer pipeline encodes."""
    mean, std = latent_normalisation(vae)
    return (vae.encode(frames_to_video(frames)).latent_dist.mean - mean) / std


@torch.no_grad()
def decode(vae: nn.Module, latents: torch.Tensor) -> np.ndarray:
    """Normalised latents (1, z, F, h, w) -> uint8 frames, as the enhancer pipeline decodes."""
    mean, std = latent_normalisation(vae)
    return video_to_frames(vae.decode(latents * std + mean).sample.clamp(-1, 1))


def make_pairs(vae: nn.Module, clips: np.ndarray, degradation: DegradationConfig, seed: int = 0,
               progress: Callable[[int], None] = lambda _: None) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Degraded copies of uint8 clips (N, T, H, W, 3) (each its own seeded strengths, after a VAE
    round trip) and the normalised latents of the clean and the degraded clips."""
    rng = np.random.default_rng(seed)
    degraded, clean_latents, degraded_latents = [], [], []
    for clip in clips:
        how = sample_degradation(degradation, rng)
        copy = degrade(clip, how, rng, vae_round_trip=lambda frames: decode(vae, encode(vae, frames)))
        degraded.append(copy)
        clean_latents.append(encode(vae, clip))
        degraded_latents.append(encode(vae, copy))
        progress(1)
    return np.stack(degraded), torch.cat(clean_latents), torch.cat(degraded_latents)


def write_pair_set(folder: Path, vae: nn.Module, clean_latents: torch.Tensor, degraded_latents: torch.Tensor,
                   held_out_clean: np.ndarray, held_out_degraded: np.ndarray, info: dict) -> Path:
    """The pair folder: pairs.safetensors, vae.safetensors, held_out.safetensors, pairs.json."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({"clean": clean_latents.contiguous(), "degraded": degraded_latents.contiguous()}, folder / PAIRS_FILE)
    save_file({k: v.detach().contiguous() for k, v in vae.state_dict().items()}, folder / VAE_FILE)
    save_file({"clean": torch.from_numpy(np.ascontiguousarray(held_out_clean)),
               "degraded": torch.from_numpy(np.ascontiguousarray(held_out_degraded))}, folder / HELD_OUT_FILE)
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2, default=lambda o: asdict(o)))
    return folder
