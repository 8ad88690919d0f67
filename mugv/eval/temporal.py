"""Temporal metrics of one video from its pixels and OpenCV optical flow (no learned weights).

- `temporal_flickering`: VBench's formula, (255 - mean MAE of consecutive frames) / 255.
- `dynamic_degree`: VBench's rule (frames sampled at about 8 fps; a pair moves when the mean of
  its top 5 % flow magnitudes exceeds 6 * max(1, 8 / fps) * min(H, W) / 256; the video moves when
  round(4 * pairs / 16) pairs do) on a pluggable flow estimator: OpenCV DIS by default, where
  VBench runs RAFT.
- `motion_smoothness_proxy`: VBench's protocol (predict every odd frame from its two even
  neighbours, score (255 - MAE) / 255) with the prediction made by warping both neighbours half
  way along OpenCV flow, where VBench runs the AMT-S interpolation network.
- `frozen_share`: the share of consecutive frames that do not change.

Flow is estimated on frames shrunk to `FLOW_SHORT_SIDE`; magnitudes and VBench's threshold are
both in pixels of that size, so the rule is the one VBench applies at full size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from mugv.eval.scores import NotMeasurable
from mugv.video import resize_short_side, to_gray

FLOW_SHORT_SIDE = 256
FROZEN_MAE = 0.5  # mean absolute change (0-255) under which a frame counts as a repeat

# Two uint8 RGB frames [H, W, 3] -> flow [H, W, 2] in pixels, from the first to the second.
FlowEstimator = Callable[[np.ndarray, np.ndarray], np.ndarray]


def dis_flow(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """OpenCV's DIS optical flow (medium preset) on the luma."""
    estimator = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return estimator.calc(to_gray(first), to_gray(second), None)


def flow_frames(frames: np.ndarray, short_side: int = FLOW_SHORT_SIDE) -> np.ndarray:
    """The frames at the size flow is estimated on (never enlarged)."""
    if min(frames.shape[1:3]) <= short_side:
        return np.asarray(frames)
    return resize_short_side(np.asarray(frames), short_side)


def frame_differences(frames: np.ndarray) -> np.ndarray:
    """Mean absolute difference (0-255, over pixels and channels) of each consecutive pair."""
    return np.array([cv2.norm(frames[i], frames[i + 1], cv2.NORM_L1) / frames[i].size for i in range(len(frames) - 1)])


def temporal_flickering(frames: np.ndarray, differences: np.ndarray | None = None) -> float:
    """(255 - mean over consecutive pairs of their mean absolute difference) / 255; 1 for a
    static video. VBench scores it on prompts that describe static scenes. `differences`: the
    frames' `frame_differences`, when already computed."""
    if len(frames) < 2:
        raise NotMeasurable("temporal flickering needs at least 2 frames")
    differences = frame_differences(frames) if differences is None else differences
    return (255.0 - float(np.mean(differences))) / 255.0


def frozen_share(frames: np.ndarray, threshold: float = FROZEN_MAE, differences: np.ndarray | None = None) -> float:
    """Share of consecutive frame pairs whose mean absolute difference is under `threshold`."""
    if len(frames) < 2:
        return 0.0
    differences = frame_differences(frames) if differences is None else differences
    return float(np.mean(differences < threshold))


@dataclass
class DynamicDegree:
    """VBench's per-video dynamic-degree decision and what it was made from."""

    moving: bool
    pair_scores: list[float]  # mean of the top 5 % flow magnitudes of each sampled pair
    threshold: float  # in pixels of the analysed frames
    pairs_needed: int

    @property
    def moving_share(self) -> float:
        """Share of sampled pairs above the threshold: a graded version of `moving`."""
        return float(np.mean([s > self.threshold for s in self.pair_scores])) if self.pair_scores else 0.0

    @property
    def relative_motion(self) -> float:
        """Mean pair score over the threshold: a continuous figure (1 = VBench's bar for a moving
        pair), for ranking clips by how much they move."""
        return float(np.mean(self.pair_scores)) / self.threshold if self.pair_scores else 0.0

    def detail(self) -> dict:
        return {"moving_share": self.moving_share, "relative_motion": self.relative_motion,
                "threshold_px": self.threshold, "pairs_needed": self.pairs_needed,
                "pair_scores": [round(s, 3) for s in self.pair_scores]}


def top_magnitude(flow: np.ndarray, share: float = 0.05) -> float:
    """Mean of the largest `share` of the flow magnitudes (VBench: int(H * W * 0.05) of them)."""
    magnitudes = np.hypot(flow[..., 0], flow[..., 1]).ravel()
    count = max(1, int(magnitudes.size * share))
    return float(np.partition(magnitudes, magnitudes.size - count)[-count:].mean())


def dynamic_degree(frames: np.ndarray, fps: float = 8.0, flow: FlowEstimator = dis_flow,
                   short_side: int = FLOW_SHORT_SIDE) -> DynamicDegree:
    """Whether a video moves, by VBench's rule (module note). `frames`: uint8 RGB [T, H, W, 3]
    at any size; `fps`: their frame rate."""
    fps = fps if fps > 0 else 8.0
    sampled = flow_frames(np.asarray(frames)[:: max(1, round(fps / 8))], short_side)
    threshold = max(1.0, 8.0 / fps) * 6.0 * min(sampled.shape[1:3]) / 256.0
    needed = round(4 * len(sampled) / 16.0)
    scores = [top_magnitude(flow(a, b)) for a, b in zip(sampled[:-1], sampled[1:])]
    moving = sum(s > threshold for s in scores) >= needed
    return DynamicDegree(bool(moving), scores, threshold, needed)


def warp(frame: np.ndarray, flow: np.ndarray, fraction: float) -> np.ndarray:
    """`frame` sampled at x - fraction * flow(x): moved `fraction` of the way along `flow`."""
    height, width = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(frame, grid_x - fraction * flow[..., 0], grid_y - fraction * flow[..., 1],
                     interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def interpolate_midpoint(first: np.ndarray, second: np.ndarray, flow: FlowEstimator = dis_flow) -> np.ndarray:
    """The frame half way between two frames: each warped half way towards the other, averaged."""
    forward, backward = flow(first, second), flow(second, first)
    halves = warp(first, forward, 0.5).astype(np.float32) + warp(second, backward, 0.5).astype(np.float32)
    return np.clip(np.rint(halves / 2), 0, 255).astype(np.uint8)


def motion_smoothness_proxy(frames: np.ndarray, flow: FlowEstimator = dis_flow,
                            short_side: int = FLOW_SHORT_SIDE) -> float:
    """(255 - mean MAE between each odd frame and its interpolation from the even frames around
    it) / 255, at the flow size. 1 for a static video; lower when motion is jerky."""
    small = flow_frames(np.asarray(frames), short_side)
    if len(small) < 3:
        raise NotMeasurable("motion smoothness needs at least 3 frames")
    errors = [cv2.absdiff(interpolate_midpoint(small[i - 1], small[i + 1], flow), small[i]).mean()
              for i in range(1, len(small) - 1, 2)]
    return (255.0 - float(np.mean(errors))) / 255.0
