"""Filter: aesthetic score on a 0-10 scale (MUG-V keeps >= 4.5).

Two scorers behind one interface:
- `laion`: the LAION-style predictor (an MLP on L2-normalised CLIP image embeddings, the layout of
  the "improved aesthetic predictor") from local weights: a CLIP folder for `transformers` and the
  MLP's state dict (.pth or .safetensors). Nothing is downloaded.
- `photometric` (offline default): NOT a learned aesthetic model. It rates exposure, contrast and
  colourfulness (Hasler and Suesstrunk), which rejects black, washed-out, clipped and flat footage
  but says nothing about composition. Say so wherever its scores are reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from mugv.config import ConfigError
from mugv.video import sample_indices, to_gray


@dataclass
class AestheticConfig:
    enabled: bool = True
    scorer: Literal["photometric", "laion"] = "photometric"
    min_score: float = 4.5
    samples: int = 3
    clip_model: str = ""  # laion: local folder of a CLIP model (transformers format)
    head_weights: str = ""  # laion: local MLP weights
    device: str = "cpu"

    def validate(self) -> None:
        if self.scorer == "laion" and not (self.clip_model and self.head_weights):
            raise ConfigError("aesthetic.scorer = 'laion' needs aesthetic.clip_model and aesthetic.head_weights (local paths)")
        if self.samples < 1:
            raise ConfigError("aesthetic.samples must be >= 1")


class AestheticScorer(Protocol):
    def score(self, frames: np.ndarray) -> float:
        """Mean score of some uint8 RGB frames [N, H, W, 3], on a 0-10 scale."""
        ...


class PhotometricScorer:
    """Exposure, contrast and colourfulness folded into 0-10 (see the module note)."""

    def score(self, frames: np.ndarray) -> float:
        return float(np.mean([self._frame_score(f) for f in frames]))

    @staticmethod
    def _frame_score(frame: np.ndarray) -> float:
        gray = to_gray(frame).astype(np.float32)
        contrast = min(1.0, float(gray.std()) / 50.0)
        rgb = frame.astype(np.float32)
        rg, yb = rgb[..., 0] - rgb[..., 1], 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
        colourfulness = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
        colour = min(1.0, colourfulness / 40.0)
        clipped = float(((gray < 8) | (gray > 247)).mean())
        mid = float(gray.mean()) / 255.0
        exposure = (1.0 - min(1.0, clipped / 0.5)) * (1.0 - min(1.0, abs(mid - 0.45) / 0.45))
        return 10.0 * (0.4 * contrast + 0.25 * colour + 0.35 * exposure)


class LaionScorer:
    """CLIP image embedding -> MLP, as the LAION improved aesthetic predictor."""

    def __init__(self, clip_model: str, head_weights: str, device: str = "cpu"):
        import torch
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        self.device = torch.device(device)
        self.processor = CLIPImageProcessor.from_pretrained(clip_model, local_files_only=True)
        self.clip = CLIPVisionModelWithProjection.from_pretrained(clip_model, local_files_only=True).to(self.device).eval()
        self.head = laion_head(self.clip.config.projection_dim).to(self.device).eval()
        self.head.load_state_dict(_load_state_dict(head_weights))

    def score(self, frames: np.ndarray) -> float:
        import torch

        with torch.no_grad():
            pixels = self.processor(images=list(frames), return_tensors="pt")["pixel_values"].to(self.device)
            embeds = self.clip(pixel_values=pixels).image_embeds
            embeds = embeds / embeds.norm(dim=-1, keepdim=True)
            return float(self.head(embeds).mean())


def laion_head(dim: int):
    """The improved-aesthetic-predictor MLP; module indices match its released state dicts."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
    )  # fmt: skip


def _load_state_dict(path: str) -> dict:
    import torch

    if Path(path).suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # The released file prefixes keys with "layers."; accept both forms.
    return {key.removeprefix("layers."): value for key, value in state.items()}


@lru_cache(maxsize=2)
def make_scorer(scorer: str, clip_model: str = "", head_weights: str = "", device: str = "cpu") -> AestheticScorer:
    if scorer == "laion":
        return LaionScorer(clip_model, head_weights, device)
    return PhotometricScorer()


def aesthetic_score(cfg: AestheticConfig, frames: np.ndarray) -> float:
    scorer = make_scorer(cfg.scorer, cfg.clip_model, cfg.head_weights, cfg.device)
    return scorer.score(frames[sample_indices(0, len(frames), cfg.samples)])


def aesthetic_reasons(cfg: AestheticConfig, score: float) -> list[str]:
    return ["low_aesthetic"] if score < cfg.min_score else []
