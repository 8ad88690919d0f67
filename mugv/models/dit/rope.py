"""3D rotary position embedding of MUG-DiT.

The head dimension is split into h | w | t thirds; each third holds head_dim / 6 rotary pairs of
interleaved adjacent channels, and all three axes share the frequencies
`theta ** (-6 i / head_dim)`. Video tokens sit at (t = 1..T, h, w); the start token at
(t = 0, h = 0, w = 0) and the end token at (t = T + 1, h = H' - 1, w = W' - 1).
"""

from __future__ import annotations

import torch


def rope_frequencies(head_dim: int, theta: float = 10000.0, device: torch.device | None = None) -> torch.Tensor:
    pairs = head_dim // 6
    exponents = torch.arange(0, head_dim, 6, device=device, dtype=torch.float32)[:pairs] / head_dim
    return 1.0 / theta**exponents


def token_positions(frames: int, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """(frames * height * width + 2, 3) integer positions (h, w, t), start and end tokens included."""
    t, h, w = torch.meshgrid(
        torch.arange(1, frames + 1, device=device),
        torch.arange(height, device=device),
        torch.arange(width, device=device),
        indexing="ij",
    )
    video = torch.stack([h.flatten(), w.flatten(), t.flatten()], dim=-1)
    start = torch.tensor([[0, 0, 0]], device=device)
    end = torch.tensor([[height - 1, width - 1, frames + 1]], device=device)
    return torch.cat([start, video, end])


def rope_angles(
    frames: int,
    height: int,
    width: int,
    head_dim: int,
    theta: float = 10000.0,
    max_time_position: int = 480,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (tokens, head_dim // 2), float32, one entry per rotary pair.

    Temporal positions are clamped to the release's table size, as its inference does.
    """
    positions = token_positions(frames, height, width, device=device)
    positions[:, 2].clamp_(max=max_time_position - 1)
    freqs = rope_frequencies(head_dim, theta, device=device)
    angles = (positions.to(torch.float32)[:, :, None] * freqs).flatten(1)  # (N, 3 * pairs) in h|w|t order
    return angles.cos(), angles.sin()
