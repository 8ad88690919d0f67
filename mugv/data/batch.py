"""The unit of training data: a batch of latents of one size, with their text."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class LatentBatch:
    """latents: (B, C, T, H, W) normalised VAE latents. text: (B, L, D) encoder states with
    text_mask (B, L), True for real tokens. fps: (B,). pixel_height / pixel_width: the clip size
    in pixels (for the timestep shift)."""

    latents: torch.Tensor
    text: torch.Tensor
    text_mask: torch.Tensor
    fps: torch.Tensor
    pixel_height: int
    pixel_width: int

    def __post_init__(self) -> None:
        b = self.latents.shape[0]
        if self.latents.ndim != 5:
            raise ValueError(f"latents must be (B, C, T, H, W), got shape {tuple(self.latents.shape)}")
        if self.text.shape[0] != b or self.text_mask.shape != self.text.shape[:2] or self.fps.shape != (b,):
            raise ValueError(
                f"batch parts disagree: latents {tuple(self.latents.shape)}, text {tuple(self.text.shape)}, "
                f"text_mask {tuple(self.text_mask.shape)}, fps {tuple(self.fps.shape)}"
            )
        if not bool(self.text_mask.any(dim=1).all()):
            raise ValueError("every sample needs at least one real text token (text_mask row is all False)")

    @property
    def size(self) -> int:
        return self.latents.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "LatentBatch":
        return replace(
            self,
            latents=self.latents.to(device, non_blocking=non_blocking),
            text=self.text.to(device, non_blocking=non_blocking),
            text_mask=self.text_mask.to(device, non_blocking=non_blocking),
            fps=self.fps.to(device, non_blocking=non_blocking),
        )
