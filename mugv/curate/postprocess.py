"""Filter: signs of post-processing and unusable camera work.

Measured cues, each a score in the manifest and a rejection reason past its threshold:
- `border_fraction`: uniform bars at the top+bottom (letterbox) or left+right (pillarbox);
- `text_fraction`: area of persistent, text-shaped high-contrast blobs (burnt-in captions, logos);
- `frozen_fraction`: share of consecutive frames that do not change (static / frozen footage);
- `speed_ratio`: fastest vs slowest quarter of the clip's global motion (slow motion or speed
  ramps spliced into normal footage);
- `shake`: high-frequency jitter of the global translation, in % of the frame width per frame.

An optional judge hook (`judge = "package.module:function"`) receives the sampled frames and the
clip's metadata and returns extra rejection reasons: the place to plug a multimodal LLM judge run
from local weights.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from mugv.config import ConfigError
from mugv.video import sample_indices, shrink_stack, to_gray

JUDGE_WIDTH = 128  # temporal cues are computed on frames this wide
BAR_GUARD = 3  # pixels skipped next to detected bars (codec ringing along their edge)


@dataclass
class PostprocessConfig:
    enabled: bool = True
    samples: int = 6  # frames sampled for borders and text
    max_border_fraction: float = 0.06
    max_text_fraction: float = 0.004
    frozen_pixel_delta: float = 0.6  # mean |difference| (0-255) below which a frame did not change
    static_fraction: float = 0.9  # frozen share at or above which the clip is static
    max_frozen_fraction: float = 0.3
    max_speed_ratio: float = 8.0
    max_shake: float = 3.0
    judge: str = ""  # "package.module:function", called as function(frames, metadata) -> list[str]

    def validate(self) -> None:
        if self.samples < 2:
            raise ConfigError("postprocess.samples must be >= 2")
        if self.judge and ":" not in self.judge:
            raise ConfigError(f"postprocess.judge = {self.judge!r} must look like 'package.module:function'")


def postprocess_scores(cfg: PostprocessConfig, frames: np.ndarray, small: np.ndarray | None = None) -> dict[str, float]:
    """Scores of one clip; `small` is its luma about `JUDGE_WIDTH` wide, which the temporal cues
    are computed from (`small_grays(frames)` when not given)."""
    picks = frames[sample_indices(0, len(frames), cfg.samples)]
    grays = to_gray(picks)
    small = small_grays(frames) if small is None else small
    diffs = np.abs(np.diff(small.astype(np.float32), axis=0)).mean(axis=(1, 2)) if len(small) > 1 else np.zeros(1)
    frozen = diffs < cfg.frozen_pixel_delta
    shifts = _global_shifts(small)
    rows, cols = _flat_edges(grays, axis=1), _flat_edges(grays, axis=2)
    # Look for text inside the bars, a little away from them: their edges are persistent too.
    top, bottom = (rows[0] + BAR_GUARD, rows[1] + BAR_GUARD) if rows[0] else (0, 0)
    left, right = (cols[0] + BAR_GUARD, cols[1] + BAR_GUARD) if cols[0] else (0, 0)
    content = grays[:, top : grays.shape[1] - bottom, left : grays.shape[2] - right]
    moving = ~frozen[: len(shifts)]
    return {
        "border_fraction": max(sum(rows) / grays.shape[1], sum(cols) / grays.shape[2]),
        "text_fraction": _text_fraction(content) * content[0].size / grays[0].size,
        "frozen_fraction": float(frozen.mean()),
        "speed_ratio": _speed_ratio(np.linalg.norm(shifts[moving], axis=1) * 100.0 / small.shape[2]),
        "shake": _shake(shifts) * 100.0 / small.shape[2],
    }


def border_side(grays: np.ndarray) -> str:
    """Which kind of bars dominate: `letterbox` (rows) or `pillarbox` (columns)."""
    rows, cols = _flat_edges(grays, axis=1), _flat_edges(grays, axis=2)
    return "letterbox" if sum(rows) / grays.shape[1] >= sum(cols) / grays.shape[2] else "pillarbox"


def postprocess_reasons(cfg: PostprocessConfig, scores: dict[str, float], frames: np.ndarray) -> list[str]:
    reasons = []
    if scores["border_fraction"] > cfg.max_border_fraction:
        reasons.append(border_side(to_gray(frames[sample_indices(0, len(frames), cfg.samples)])))
    if scores["text_fraction"] > cfg.max_text_fraction:
        reasons.append("text_overlay")
    if scores["frozen_fraction"] >= cfg.static_fraction:
        reasons.append("static")
    elif scores["frozen_fraction"] > cfg.max_frozen_fraction:
        reasons.append("frozen_frames")
    if scores["speed_ratio"] > cfg.max_speed_ratio:
        reasons.append("speed_change")
    if scores["shake"] > cfg.max_shake:
        reasons.append("shake")
    return reasons


def judge_reasons(cfg: PostprocessConfig, frames: np.ndarray, metadata: dict) -> list[str]:
    if not cfg.judge:
        return []
    picks = frames[sample_indices(0, len(frames), cfg.samples)]
    return [f"judge:{reason}" for reason in _load_judge(cfg.judge)(picks, metadata)]


@lru_cache(maxsize=4)
def _load_judge(spec: str) -> Callable[[np.ndarray, dict], list[str]]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def small_grays(frames: np.ndarray) -> np.ndarray:
    """Luma of RGB frames at an integer fraction of their size, about `JUDGE_WIDTH` wide (integer
    factors keep the area resize on its fast path)."""
    factor = max(1, round(frames.shape[2] / JUDGE_WIDTH))
    grays = to_gray(frames)
    return grays if factor == 1 else shrink_stack(grays, max(2, frames.shape[2] // factor), max(2, frames.shape[1] // factor))


def _flat_edges(grays: np.ndarray, axis: int) -> tuple[int, int]:
    """How many rows (axis=1) or columns (axis=2) at the leading and trailing edge are flat and
    unchanging in every sampled frame. Bars count only in pairs, one on each side, as letterbox
    and pillarbox bars come; a wholly flat picture has no bars."""
    mean, std = _mean_std(grays, axis=3 - axis)
    flat = np.all(std < 4.0, axis=0) & (np.ptp(mean, axis=0) < 4.0)
    if flat.all():
        return 0, 0
    leading, trailing = int(np.argmin(flat)), int(np.argmin(flat[::-1]))
    return (leading, trailing) if min(leading, trailing) > 0 else (0, 0)


def _mean_std(grays: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of uint8 values along `axis`, from sums of values and of
    squares (exact in float64 for uint8) instead of numpy's two passes over float copies."""
    values = grays.astype(np.float64)
    count = grays.shape[axis]
    mean = values.sum(axis=axis) / count
    mean_square = np.einsum(_SQUARES_ALONG[axis], values, values) / count
    return mean, np.sqrt(np.maximum(mean_square - mean * mean, 0.0))


_SQUARES_ALONG = {0: "tij,tij->ij", 1: "tij,tij->tj", 2: "tij,tij->ti"}


def _text_fraction(grays: np.ndarray) -> float:
    """Area share of text-shaped blobs of strong edges present in every sampled frame, over
    content that changes (a persistent overlay on moving footage)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
    gradients = np.stack([cv2.morphologyEx(g, cv2.MORPH_GRADIENT, kernel) for g in grays])
    persistent = (gradients.min(axis=0) > 80).astype(np.uint8)
    changing = _mean_std(grays, axis=0)[1] > 6.0
    height, width = persistent.shape
    joined = cv2.morphologyEx(persistent, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (max(3, width // 40), 1)))
    count, _, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    area = 0
    for x, y, w, h, pixels in stats[1:count]:
        text_like = 0.01 * height <= h <= 0.15 * height and 2 * h <= w <= 0.9 * width and pixels >= 0.3 * w * h
        # Around the blob the picture must move, or this is just a static scene's edge.
        ring = changing[max(0, y - h) : y + 2 * h, max(0, x - h) : x + w + h]
        if text_like and ring.mean() > 0.3:
            area += w * h
    return area / float(height * width)


def _global_shifts(small: np.ndarray) -> np.ndarray:
    """[T-1, 2] global translation between consecutive frames (phase correlation), in pixels."""
    if len(small) < 2:
        return np.zeros((0, 2))
    window = np.outer(np.hanning(small.shape[1]), np.hanning(small.shape[2])).astype(np.float32)
    frames = small.astype(np.float32)
    return np.array([cv2.phaseCorrelate(a, b, window)[0] for a, b in itertools.pairwise(frames)])


def _speed_ratio(speeds: np.ndarray) -> float:
    """Fastest vs slowest quarter of the clip (median global speed of each, in % of the width per
    frame, floored at 0.1 % so still quarters do not explode it); 1 for an even pace."""
    if len(speeds) < 8:
        return 1.0
    quarters = [float(np.median(q)) for q in np.array_split(speeds, 4)]
    return max(max(quarters), 0.1) / max(min(quarters), 0.1)


def _shake(shifts: np.ndarray) -> float:
    """RMS of the global shift around its 5-frame moving average (jitter, not pans), in pixels."""
    if len(shifts) < 5:
        return 0.0
    trend = np.stack([np.convolve(np.pad(shifts[:, i], 2, mode="edge"), np.ones(5) / 5, mode="valid") for i in range(2)], axis=1)
    return float(np.sqrt(((shifts - trend) ** 2).sum(axis=1).mean()))
