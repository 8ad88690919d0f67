"""A synthetic world for the demo: coloured shapes moving in a stated direction over a textured
background, with captions that say so. Its truth is known, so a generated video can be scored
for prompt adherence (`mugv.demo.adherence`)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from mugv.utils.seeds import derived_seed

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
# Dark gray: every palette colour differs from it in luminance too (optical flow sees gray only).
BACKGROUND = (40, 40, 40)
# Shape radius as a fraction of the frame's short side: large enough to span a few latent pixels
# of the 8x-downsampling VAE, so colour and position survive encoding at 64x64.
RADIUS_RANGE = (0.2, 0.24)


@dataclass(frozen=True)
class Scene:
    color: str
    shape: str
    direction: str

    @property
    def caption(self) -> str:
        way = {"right": "to the right", "left": "to the left", "up": "upward", "down": "downward"}[self.direction]
        return f"a {self.color} {self.shape} moves {way} on a gray background"


def all_scenes() -> list[Scene]:
    return [Scene(c, s, d) for c, s, d in itertools.product(COLORS, SHAPES, DIRECTIONS)]


def sub_seed(seed: int, n: int) -> int:
    """The seed of item `n` of a run seeded `seed`: every seed of a demo follows its `--seed`, and seed 0
    keeps `n` itself."""
    return derived_seed(seed, n)


def split_scenes(held_out: int = 6, seed: int = 0) -> tuple[list[Scene], list[Scene]]:
    """Train and held-out scenes; every colour, shape and direction still appears in training,
    only the held-out combinations are new."""
    scenes = all_scenes()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(scenes))
    held, train = [], []
    for i in order:
        scene = scenes[i]
        rest = [s for s in scenes if s not in held and s != scene]
        covers = all(any(getattr(s, a) == getattr(scene, a) for s in rest) for a in ("color", "shape", "direction"))
        (held if len(held) < held_out and covers else train).append(scene)
    return train, held


def background(height: int, width: int, seed: int) -> np.ndarray:
    """Gray with fine noise texture: real high-frequency detail, so sharpness filters see a sharp clip."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 8, (height, width, 1))  # Laplacian variance ~ 20 sigma^2 ~ 1300: inside [200, 2000]
    return np.clip(np.array(BACKGROUND, dtype=np.float64) + noise, 0, 255).astype(np.uint8)


def shape_mask(shape: str, height: int, width: int, cx: float, cy: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        return (np.abs(dx) <= radius * 0.85) & (np.abs(dy) <= radius * 0.85)
    if shape == "triangle":
        return (dy <= radius * 0.8) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) * 0.6)
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, frames: int = 17, height: int = 64, width: int = 64, seed: int = 0,
           speed: float | None = None) -> np.ndarray:
    """(frames, height, width, 3) uint8: the shape crosses the frame in its direction."""
    rng = np.random.default_rng(seed)
    bg = background(height, width, seed)
    radius = min(height, width) * rng.uniform(*RADIUS_RANGE)
    dx, dy = DIRECTIONS[scene.direction]
    # most of the way across the frame: clear motion even in a short, small clip
    span_x, span_y = width - 2.5 * radius, height - 2.5 * radius
    travel = speed if speed is not None else rng.uniform(0.8, 1.0)
    # start on the side the shape comes from, at a random position across the motion
    cx0 = width / 2 - dx * travel * span_x / 2 + (0 if dx else rng.uniform(-0.3, 0.3) * span_x)
    cy0 = height / 2 - dy * travel * span_y / 2 + (0 if dy else rng.uniform(-0.3, 0.3) * span_y)
    color = np.array(COLORS[scene.color], dtype=np.uint8)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        progress = t / max(frames - 1, 1)
        cx = cx0 + dx * travel * span_x * progress
        cy = cy0 + dy * travel * span_y * progress
        frame = bg.copy()
        frame[shape_mask(scene.shape, height, width, cx, cy, radius)] = color
        out[t] = frame
    return out
