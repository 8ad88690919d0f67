"""Does a generated video show what its prompt asked for? Colour, shape and motion direction of
the moving shape, measured against the synthetic world's palette and shapes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mugv.demo.world import BACKGROUND, COLORS, Scene


@dataclass
class Reading:
    color: str | None  # nearest palette colour of the foreground, None when no foreground
    direction: str | None  # dominant axis and sign of the foreground's motion, None if it barely moves
    foreground: float  # mean fraction of pixels that differ from the background
    shape: str | None = None  # the world's shape nearest in how much of its box it fills (read_shape)


def foreground_mask(frames: np.ndarray, threshold: float = 70.0) -> np.ndarray:
    """Pixels far from the gray background (its texture stays well within the threshold). Colour
    is not required, so the motion of a shape is still read when a model renders it desaturated."""
    distance = np.linalg.norm(frames.astype(np.float64) - np.array(BACKGROUND, dtype=np.float64), axis=-1)
    return distance > threshold


# How much of its bounding box each demo shape fills (mugv.demo.world.shape_mask).
SHAPE_FILL = {"circle": float(np.pi / 4), "square": 1.0, "triangle": 0.5}


def box_fill(frames: np.ndarray) -> float | None:
    """How much of its bounding box the foreground fills (median over frames with a foreground);
    None when no frame shows one."""
    fills = []
    for mask in foreground_mask(frames):
        ys, xs = np.nonzero(mask)
        if len(xs) >= 20:  # a few stray pixels are not a shape
            fills.append(len(xs) / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)))
    return float(np.median(fills)) if fills else None


def read_shape(frames: np.ndarray) -> str | None:
    """The demo shape whose fill of its bounding box is nearest the foreground's; None when no frame
    shows one."""
    fill = box_fill(frames)
    if fill is None:
        return None
    return min(SHAPE_FILL, key=lambda shape: abs(SHAPE_FILL[shape] - fill))


def foreground_color(frames: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray | None:
    """Mean RGB of the foreground pixels; None when there are none."""
    mask = foreground_mask(frames) if mask is None else mask
    return frames[mask].astype(np.float64).mean(axis=0) if mask.any() else None


def read_video(frames: np.ndarray, min_motion: float = 0.05) -> Reading:
    """Colour, shape and direction of the moving shape in (T, H, W, 3) uint8 frames."""
    mask = foreground_mask(frames)
    share = float(mask.mean())
    if share < 0.002:  # a shape covers a few % of the frame; stray texture pixels are not one
        return Reading(None, None, share)
    shape = read_shape(frames)
    mean_color = foreground_color(frames, mask)
    color = min(COLORS, key=lambda name: np.linalg.norm(mean_color - np.array(COLORS[name])))
    centroids = []
    for frame_mask in mask:
        ys, xs = np.nonzero(frame_mask)
        if len(xs):
            centroids.append((xs.mean(), ys.mean()))
    if len(centroids) < 2:
        return Reading(color, None, share, shape)
    first = np.mean(centroids[: max(1, len(centroids) // 4)], axis=0)
    last = np.mean(centroids[-max(1, len(centroids) // 4) :], axis=0)
    dx, dy = last - first
    height, width = frames.shape[1:3]
    if max(abs(dx) / width, abs(dy) / height) < min_motion:
        return Reading(color, None, share, shape)
    direction = ("right" if dx > 0 else "left") if abs(dx) / width >= abs(dy) / height else ("down" if dy > 0 else "up")
    return Reading(color, direction, share, shape)


@dataclass
class AdherenceReport:
    rows: list[dict]

    @property
    def color_accuracy(self) -> float:
        return float(np.mean([r["color_ok"] for r in self.rows])) if self.rows else 0.0

    @property
    def direction_accuracy(self) -> float:
        return float(np.mean([r["direction_ok"] for r in self.rows])) if self.rows else 0.0

    @property
    def shape_accuracy(self) -> float:
        return float(np.mean([r["shape_ok"] for r in self.rows])) if self.rows else 0.0


def score(videos: list[tuple[Scene, np.ndarray]]) -> AdherenceReport:
    rows = []
    for scene, frames in videos:
        reading = read_video(frames)
        rows.append({
            "prompt": scene.caption,
            "color": scene.color,
            "seen_color": reading.color,
            "color_ok": reading.color == scene.color,
            "direction": scene.direction,
            "seen_direction": reading.direction,
            "direction_ok": reading.direction == scene.direction,
            "shape": scene.shape,
            "seen_shape": reading.shape,
            "shape_ok": reading.shape == scene.shape,
            "foreground": reading.foreground,
        })
    return AdherenceReport(rows)
