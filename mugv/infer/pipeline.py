"""Text-to-video, image-to-video and text+image-to-video with one MUG-DiT.

A request names a prompt and, optionally, a reference image (it becomes latent frame 0, given
clean) or the first frames of a video to continue (they become the first latent frames). The
DiT runs the shifted Euler sampler with classifier-free guidance against a negative prompt (or
the null text when the negative prompt is empty); conditioning frames are reset to their clean
latents after every step; the VAE decodes; the reference frame is kept exactly in the output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from mugv.config import DEFAULT_CFG_SCALE, DEFAULT_STEPS, NEGATIVE_PROMPT, FlowConfig
from mugv.errors import MugvError
from mugv.flow import CFGVelocity, euler_sample, sampling_sigmas, shift_ratio
from mugv.models.dit.model import MUGDiT
from mugv.models.text.encoders import TextEmbeddings, with_aesthetic
from mugv.models.vae.model import MUGVideoVAE
from mugv.models.vae.precision import resolve_vae_precision, vae_precision
from mugv.utils.device import visiting
from mugv.video.tensors import to_model_pixels, to_uint8

ASPECT_RATIOS = ("16:9", "4:3", "1:1", "3:4", "9:16")
# (height, width) per resolution, in the order of ASPECT_RATIOS; every size divisible by 16.
RESOLUTIONS: dict[str, tuple[tuple[int, int], ...]] = {
    "144p": ((144, 256), (144, 192), (144, 144), (192, 144), (256, 144)),
    "256p": ((256, 448), (256, 336), (256, 256), (336, 256), (448, 256)),
    "360p": ((352, 640), (368, 480), (368, 368), (480, 368), (640, 352)),
    "480p": ((480, 848), (480, 640), (480, 480), (640, 480), (848, 480)),
    "720p": ((720, 1280), (720, 960), (720, 720), (960, 720), (1280, 720)),
}


class GenerationError(MugvError, ValueError):
    """A request that cannot be generated, worded for the person who made it."""


def frame_size(resolution: str, aspect: str) -> tuple[int, int]:
    if resolution not in RESOLUTIONS:
        raise GenerationError(f"unknown resolution {resolution!r}; known: {', '.join(RESOLUTIONS)}")
    if aspect not in ASPECT_RATIOS:
        raise GenerationError(f"unknown aspect ratio {aspect!r}; known: {', '.join(ASPECT_RATIOS)}")
    return RESOLUTIONS[resolution][ASPECT_RATIOS.index(aspect)]


def frames_for_duration(seconds: float, fps: float) -> int:
    """The 1 + 8k frame count nearest to `seconds` at `fps` (at least 1 + 8)."""
    return 1 + 8 * max(1, round(seconds * fps / 8))


@dataclass
class GenerationRequest:
    prompt: str
    height: int = 256
    width: int = 448
    num_frames: int = 33
    fps: float = 30.0
    steps: int = DEFAULT_STEPS
    cfg_scale: float = DEFAULT_CFG_SCALE
    negative_prompt: str | None = None  # None: the release's negative prompt; "": the null text
    seed: int = 0
    aesthetic_score: float | None = 6.0
    image: np.ndarray | None = None  # (H, W, 3) uint8 reference for latent frame 0
    video: np.ndarray | None = None  # (T, H, W, 3) uint8 frames to continue
    continue_frames: int = 0  # of `video`, how many lead the output (1 + 8k)
    name: str = ""

    def validate(self) -> None:
        if not self.prompt.strip():
            raise GenerationError("the prompt is empty")
        for side, value in (("height", self.height), ("width", self.width)):
            if value < 16 or value % 16:
                raise GenerationError(f"{side} {value} is not a positive multiple of 16 (the VAE and the 2x2 patches need it)")
        if self.num_frames < 1 or (self.num_frames - 1) % 8:
            lower = 1 + 8 * max((self.num_frames - 1) // 8, 0)
            raise GenerationError(f"num_frames {self.num_frames} must be 1 + 8k (the VAE's 8x time compression): "
                                  f"use {lower} or {lower + 8}")
        if self.steps < 1:
            raise GenerationError(f"steps {self.steps} must be >= 1")
        if self.fps <= 0:
            raise GenerationError(f"fps {self.fps} must be > 0")
        if self.image is not None and self.video is not None:
            raise GenerationError("give a reference image or a video to continue, not both")
        if self.video is not None:
            k = self.continue_frames
            if k < 1 or (k - 1) % 8 or k >= self.num_frames or k > len(self.video):
                raise GenerationError(
                    f"continue_frames {k} must be 1 + 8k, fewer than num_frames {self.num_frames} and at most "
                    f"the video's {len(self.video)} frames"
                )


@dataclass
class GeneratedVideo:
    frames: np.ndarray  # (T, H, W, 3) uint8
    fps: float
    latents: torch.Tensor = field(repr=False)
    request: GenerationRequest = field(repr=False)


def fill_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (T, H, W, 3) uint8 frames to cover (height, width), then center-crop to it."""
    t, h, w, _ = frames.shape
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    x = torch.from_numpy(np.array(frames)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    x = x[:, :, top : top + height, left : left + width]
    return x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


class VideoGenerator:
    """Owns a DiT, a VAE and a text encoder (anything with `encode(prompts) -> TextEmbeddings`).

    `offload=True` keeps the text encoder and the VAE on the CPU except while they run, so the
    DiT has the accelerator's memory to itself. `vae_precision` (auto, fp32, tf32, bf16;
    mugv/models/vae/precision.py) is what the VAE computes in; its latents and pixels are
    float32 either way.
    """

    def __init__(
        self,
        dit: MUGDiT,
        vae: MUGVideoVAE,
        text_encoder,
        *,
        flow: FlowConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        offload: bool = False,
        vae_precision: str = "auto",
    ):
        self.device = torch.device(device)
        self.vae_precision = resolve_vae_precision(vae_precision, self.device)
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.flow = flow or FlowConfig()
        self.offload = offload
        self.dit = dit.to(self.device, self.dtype).eval()
        self.vae = vae.to("cpu" if offload else self.device).eval()
        self.text_encoder = text_encoder
        if getattr(text_encoder, "dim", dit.cfg.text_dim) != dit.cfg.text_dim:
            raise GenerationError(
                f"the text encoder gives {text_encoder.dim}-d states but the DiT takes {dit.cfg.text_dim}-d text"
            )

    def _on_device(self, module: torch.nn.Module):
        return visiting(module, self.device, self.offload)

    # ----- pieces ----------------------------------------------------------------------------

    def encode_text(self, request: GenerationRequest) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """(states, mask) of the prompt and of the negative prompt (or the null text), one row each,
        padded to the same length."""
        prompt = with_aesthetic(request.prompt, request.aesthetic_score)
        negative = NEGATIVE_PROMPT if request.negative_prompt is None else request.negative_prompt
        max_tokens = self.dit.cfg.max_text_tokens
        encoder_model = getattr(self.text_encoder, "model", None)
        with self._on_device(encoder_model) if isinstance(encoder_model, torch.nn.Module) else contextlib.nullcontext():
            texts = [prompt] + ([negative] if negative else [])
            emb: TextEmbeddings = self.text_encoder.encode(texts)
        states, mask = emb.states[:, :max_tokens], emb.mask[:, :max_tokens]
        if negative:
            cond, uncond = (states[:1], mask[:1]), (states[1:], mask[1:])
        else:
            cond, uncond = (states, mask), self.dit.null_text(1)
        length = max(cond[0].shape[1], uncond[0].shape[1])

        def padded(pair: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            s, m = pair
            pad = length - s.shape[1]
            return (F.pad(s, (0, 0, 0, pad)).to(self.device, self.dtype), F.pad(m, (0, pad)).to(self.device))

        return padded(cond), padded(uncond)

    def conditioning(self, request: GenerationRequest, latent_shape: tuple[int, ...]) -> tuple[torch.Tensor | None, torch.Tensor, np.ndarray | None]:
        """Clean latents of the given frames, the frame mask (True = generate) and the pixels
        that lead the output unchanged."""
        c, t, h, w = latent_shape
        mask = torch.ones(1, t, dtype=torch.bool, device=self.device)
        if request.image is None and request.video is None:
            return None, mask, None
        if request.image is not None:
            given = fill_crop(request.image[None], request.height, request.width)
        else:
            given = fill_crop(request.video[: request.continue_frames], request.height, request.width)
        with self._on_device(self.vae), torch.no_grad(), vae_precision(self.vae_precision, self.device):
            clean = self.vae.encode(to_model_pixels(given).to(self.device))
        lead = clean.shape[2]
        cond = torch.zeros(1, c, t, h, w, device=self.device, dtype=torch.float32)
        cond[:, :, :lead] = clean.float()
        mask[:, :lead] = False
        return cond, mask, given

    # ----- the whole thing -------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, request: GenerationRequest, progress: Callable[[int], None] | None = None) -> GeneratedVideo:
        request.validate()
        latent_frames = 1 + (request.num_frames - 1) // 8
        shape = (self.dit.cfg.in_channels, latent_frames, request.height // 8, request.width // 8)
        (text, text_mask), (neg, neg_mask) = self.encode_text(request)
        cond, frame_mask, given = self.conditioning(request, shape)

        g = torch.Generator().manual_seed(request.seed)
        noise = torch.randn((1, *shape), generator=g).to(self.device)
        fps = torch.tensor([float(request.fps)], device=self.device)
        channels = shape[0]

        def model_fn(z: torch.Tensor, sigma: torch.Tensor, text_pair) -> torch.Tensor:
            states, mask = text_pair
            n = z.shape[0]
            out = self.dit(
                z.to(self.dtype), sigma * self.flow.num_train_timesteps, states, fps=fps.expand(n),
                text_mask=mask, frame_mask=frame_mask.expand(n, -1),
            )
            return out[:, :channels].float()

        velocity = CFGVelocity(model_fn, (text, text_mask), (neg, neg_mask), request.cfg_scale,
                               combine=lambda a, b: (torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])))
        ratio = shift_ratio(request.height, request.width, latent_frames, self.flow.base_resolution) if self.flow.shift else 1.0
        latents = euler_sample(velocity, noise, sampling_sigmas(request.steps, ratio), cond_latents=cond,
                               frame_mask=frame_mask if cond is not None else None, progress=progress)

        with self._on_device(self.vae), vae_precision(self.vae_precision, self.device):
            video = self.vae.decode(latents.to(self.device), num_frames=request.num_frames)[0].float()
        frames = to_uint8(video)
        if given is not None:
            frames[: len(given)] = given  # the reference / continued frames are kept exactly
        return GeneratedVideo(frames=frames, fps=request.fps, latents=latents.cpu(), request=request)
