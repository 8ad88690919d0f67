"""Synthetic footage with known content, for tests, demos and pipeline checks: textured scenes
panning at a set speed, joined by hard cuts or dissolves, optionally blurred, frozen, shaken or
overlaid with text. Every property a curation stage measures is set by an argument."""

from __future__ import annotations

import cv2
import numpy as np


def texture(seed: int, height: int, width: int) -> np.ndarray:
    """A colourful multi-scale texture with sharp shapes (uint8 RGB), distinct for each seed."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.float32)
    for scale in (6, 24, 64):
        noise = rng.random((height // scale + 2, width // scale + 2, 3)).astype(np.float32)
        image += cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC) / 3
    image = (image - image.min()) / (np.ptp(image) + 1e-6)
    tint = rng.random(3).astype(np.float32)
    image = np.clip(0.6 * image + 0.4 * tint, 0, 1) * 255
    canvas = image.astype(np.uint8)
    for _ in range(120):  # edges that give the Laplacian something to see
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            cv2.rectangle(canvas, (x, y), (x + int(rng.integers(8, 40)), y + int(rng.integers(8, 40))), colour, -1)
        else:
            cv2.circle(canvas, (x, y), int(rng.integers(4, 20)), colour, -1)
    return canvas


def panning_shot(
    seed: int,
    frames: int,
    height: int = 96,
    width: int = 128,
    speed: float | np.ndarray = 3.0,
    shake: float = 0.0,
) -> np.ndarray:
    """`frames` views of a texture moving `speed` pixels per frame (one value, or one per frame
    for speed changes); `shake` adds a random jitter of that many pixels to every position."""
    rng = np.random.default_rng(seed + 1000)
    steps = np.abs(np.broadcast_to(np.asarray(speed, np.float64), (frames,)))
    position = np.concatenate([[0.0], np.cumsum(steps[:-1])])
    travel = int(position[-1] + 6 * shake) + 8
    big = texture(seed, height + travel, width + travel)
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        jitter = rng.normal(0, shake, 2) if shake else (0.0, 0.0)
        x = np.clip(4 + 3 * shake + position[t] + jitter[0], 0, travel)
        y = np.clip(4 + 3 * shake + 0.5 * position[t] + jitter[1], 0, travel)
        matrix = np.float32([[1, 0, -x], [0, 1, -y]])
        out[t] = cv2.warpAffine(big, matrix, (width, height), flags=cv2.INTER_LINEAR)
    return out


def dissolve(a: np.ndarray, b: np.ndarray, length: int) -> np.ndarray:
    """`a`, then `length` frames blending the end of `a` into the start of `b`, then `b`."""
    ramp = np.linspace(0, 1, length + 2, dtype=np.float32)[1:-1, None, None, None]
    middle = ((1 - ramp) * a[-length:] + ramp * b[:length]).astype(np.uint8)
    return np.concatenate([a[:-length], middle, b[length:]])


def blur(frames: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames])


def freeze(frames: np.ndarray) -> np.ndarray:
    """Every frame replaced by the first (a still picture shown as video)."""
    return np.repeat(frames[:1], len(frames), axis=0)


def overlay_text(frames: np.ndarray, text: str = "SUBSCRIBE NOW 50% OFF") -> np.ndarray:
    out = frames.copy()
    height, width = out.shape[1:3]
    for frame in out:
        cv2.putText(frame, text, (4, height - 8), cv2.FONT_HERSHEY_SIMPLEX, width / 420, (255, 255, 255), 2, cv2.LINE_AA)
    return out


def letterbox(frames: np.ndarray, fraction: float = 0.15) -> np.ndarray:
    out = frames.copy()
    bar = int(out.shape[1] * fraction)
    out[:, :bar] = 0
    out[:, out.shape[1] - bar :] = 0
    return out


def write_audio_only(path, chunks: int = 8) -> None:
    """A silent AAC file with no video stream (what a probe must reject as audio-only)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for _ in range(chunks):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
