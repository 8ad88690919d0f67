"""(degraded, clean) latent pairs: the training data of a video enhancer.

A pair set is a folder written by `mugv enhancer pairs` (mugv.enhance.pairs): `pairs.safetensors`
holds the normalised VAE latents of clean clips (`clean`, (N, C, F, h, w)) and of their degraded
copies (`degraded`, same shape), row i of both from the same clip, so a pair never comes apart.
The source walks a seeded permutation per epoch; its state is its position.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mugv.config import DataConfig
from mugv.errors import MugvError
from mugv.utils.seeds import derived_seed

PAIRS_FILE = "pairs.safetensors"


class PairSetError(MugvError, ValueError):
    """A pair set that is missing or malformed."""


@dataclass
class LatentPairBatch:
    """clean, degraded: (B, C, F, h, w) normalised latents of clips and their degraded copies.
    text: (B, L, D) prompt states, text_mask (B, L) True for real rows."""

    clean: torch.Tensor
    degraded: torch.Tensor
    text: torch.Tensor
    text_mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.clean.ndim != 5 or self.clean.shape != self.degraded.shape:
            raise ValueError(f"clean {tuple(self.clean.shape)} and degraded {tuple(self.degraded.shape)} latents "
                             "must share one (B, C, F, h, w) shape")
        if self.text.shape[0] != self.size or self.text_mask.shape != self.text.shape[:2]:
            raise ValueError(f"text {tuple(self.text.shape)} / text_mask {tuple(self.text_mask.shape)} do not fit "
                             f"a batch of {self.size}")

    @property
    def size(self) -> int:
        return self.clean.shape[0]

    @property
    def latents(self) -> torch.Tensor:
        """The clean latents: what the step's FLOPs and sizes are counted on."""
        return self.clean

    def to(self, device: torch.device | str, non_blocking: bool = False) -> LatentPairBatch:
        return replace(self, **{name: getattr(self, name).to(device, non_blocking=non_blocking)
                                for name in ("clean", "degraded", "text", "text_mask")})


def read_pair_set(folder: str | Path) -> dict[str, torch.Tensor]:
    """The `clean` and `degraded` latents of a pair set, checked."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / PAIRS_FILE
    if not path.is_file():
        raise PairSetError(f"data.pairs = {str(folder)!r}: no {PAIRS_FILE} there (make one with `mugv enhancer pairs`)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise PairSetError(f"{path}: unreadable ({exc})") from exc
    missing = {"clean", "degraded"} - set(tensors)
    if missing:
        raise PairSetError(f"{path}: lacks the tensors {sorted(missing)}")
    clean, degraded = tensors["clean"], tensors["degraded"]
    if clean.ndim != 5 or clean.shape != degraded.shape or len(clean) == 0:
        raise PairSetError(f"{path}: clean {tuple(clean.shape)} and degraded {tuple(degraded.shape)} must be one "
                           "non-empty (N, C, F, h, w) shape")
    return {"clean": clean.float(), "degraded": degraded.float()}


class LatentPairSource:
    """Batches of pairs from a pair set. Prompt-free: every sample gets one zero text row of the
    model's `text_dim` (the enhancer's prompt is a fixed quality tag; see docs/enhance.md)."""

    def __init__(self, cfg: DataConfig, latent_channels: int, text_dim: int, seed: int = 0):
        tensors = read_pair_set(cfg.pairs)
        self.clean, self.degraded = tensors["clean"], tensors["degraded"]
        if self.clean.shape[1] != latent_channels:
            raise PairSetError(f"data.pairs = {cfg.pairs!r} holds {self.clean.shape[1]}-channel latents, but the "
                               f"model takes {latent_channels}")
        self.batch_size, self.text_dim, self.seed = cfg.batch_size, text_dim, seed
        self.position = 0  # samples handed out so far

    def __len__(self) -> int:
        return len(self.clean)

    def _indices(self, start: int, count: int) -> list[int]:
        n, out = len(self), []
        for position in range(start, start + count):
            epoch, offset = divmod(position, n)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(self.seed, epoch)))
            out.append(int(order[offset]))
        return out

    def next_batch(self) -> LatentPairBatch:
        index = torch.tensor(self._indices(self.position, self.batch_size))
        self.position += self.batch_size
        b = len(index)
        return LatentPairBatch(clean=self.clean[index], degraded=self.degraded[index],
                               text=torch.zeros(b, 1, self.text_dim), text_mask=torch.ones(b, 1, dtype=torch.bool))

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])
