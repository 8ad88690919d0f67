"""Spatial tiling with linear cross-fade blending, for encoding and decoding large frames.

A frame is covered by tiles of a fixed size that overlap their neighbours; each tile is processed
on its own and the results are averaged with weights that ramp linearly across every overlap
(and are flat elsewhere, including at the frame border), so neighbouring tiles cross-fade instead
of meeting at a seam.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["blend_tiles", "tile_spans"]


def tile_spans(size: int, tile: int, overlap: int) -> list[slice]:
    """Tiles of length `tile` covering [0, size), consecutive ones overlapping by at least
    `overlap`; the last is moved back to end exactly at `size`, so every tile has full size."""
    if size <= tile:
        return [slice(0, size)]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return [slice(s, s + tile) for s in starts]


def _edge_ramp(length: int, ramp_start: int, ramp_end: int, device: torch.device) -> Tensor:
    """Weights of one tile along one axis: rising over `ramp_start` cells, falling over the last
    `ramp_end` cells, 1 in between. Cell k of a ramp of n has weight (k + 0.5) / n, so two ramps
    of the same length crossing each other sum to 1."""
    weight = torch.ones(length, device=device)
    if ramp_start:
        weight[:ramp_start] = (torch.arange(ramp_start, device=device) + 0.5) / ramp_start
    if ramp_end:
        weight[length - ramp_end :] = torch.minimum(
            weight[length - ramp_end :], (torch.arange(ramp_end, 0, -1, device=device) - 0.5) / ramp_end
        )
    return weight


def blend_tiles(
    process: Callable[[slice, slice], Tensor],
    spans_h: list[slice],
    spans_w: list[slice],
    overlap: int,
    scale: int = 1,
) -> Tensor:
    """Run `process(rows, cols)` on every tile and blend the results.

    Spans are in input cells; `process` returns (..., len(rows) * scale, len(cols) * scale), and
    `overlap` (in input cells) sets the ramp length. Returns (..., H * scale, W * scale).
    """
    height, width = spans_h[-1].stop * scale, spans_w[-1].stop * scale
    ramp = overlap * scale
    out: Tensor | None = None
    weight_sum: Tensor | None = None
    for hs in spans_h:
        for ws in spans_w:
            tile = process(hs, ws)
            if out is None:
                out = tile.new_zeros(*tile.shape[:-2], height, width)
                weight_sum = tile.new_zeros(height, width)
            wh = _edge_ramp(tile.shape[-2], ramp if hs.start > 0 else 0, ramp if hs.stop * scale < height else 0, tile.device)
            ww = _edge_ramp(tile.shape[-1], ramp if ws.start > 0 else 0, ramp if ws.stop * scale < width else 0, tile.device)
            weight = (wh[:, None] * ww[None, :]).to(tile.dtype)
            rows = slice(hs.start * scale, hs.stop * scale)
            cols = slice(ws.start * scale, ws.stop * scale)
            out[..., rows, cols] += tile * weight
            weight_sum[rows, cols] += weight
    assert out is not None and weight_sum is not None
    return out / weight_sum
