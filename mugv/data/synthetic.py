"""Seeded synthetic latents: a data source for tests and smoke runs that needs no files.

Sample i is drawn from its own generator seeded by (seed, i), so any position can be
regenerated exactly: the source's whole state is its position.
"""

from __future__ import annotations

import torch

from mugv.config import DataConfig
from mugv.data.batch import LatentBatch
from mugv.utils.seeds import derived_seed


class SyntheticLatents:
    def __init__(self, cfg: DataConfig, latent_channels: int, text_dim: int, seed: int = 0):
        self.cfg = cfg
        self.latent_channels = latent_channels
        self.text_dim = text_dim
        self.seed = seed
        self.position = 0  # samples handed out so far

    def sample(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Latents (C, T, H, W), text (L, D) and its number of real tokens for pool entry `index`."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(derived_seed(self.seed, index % cfg.num_samples))
        latents = torch.randn(self.latent_channels, cfg.latent_frames, cfg.latent_height, cfg.latent_width, generator=g)
        text = torch.randn(cfg.text_tokens, self.text_dim, generator=g)
        valid = int(torch.randint(1, cfg.text_tokens + 1, (1,), generator=g))
        return latents, text, valid

    def next_batch(self) -> LatentBatch:
        b = self.cfg.batch_size
        parts = [self.sample(self.position + i) for i in range(b)]
        self.position += b
        text_mask = torch.zeros(b, self.cfg.text_tokens, dtype=torch.bool)
        for row, (_, _, valid) in enumerate(parts):
            text_mask[row, :valid] = True
        return LatentBatch(
            latents=torch.stack([p[0] for p in parts]),
            text=torch.stack([p[1] for p in parts]) * text_mask[..., None],
            text_mask=text_mask,
            fps=torch.full((b,), float(self.cfg.fps)),
            pixel_height=self.cfg.latent_height * 8,
            pixel_width=self.cfg.latent_width * 8,
        )

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])
