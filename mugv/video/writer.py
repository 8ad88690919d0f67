"""Write uint8 RGB frames to an H.264 mp4 with PyAV (bundled FFmpeg with libx264).

The same frames always give the same bytes: libx264's macroblock-tree rate control is off, since
with it, small frames (64x64) came out different from one encode to the next in about one clip in
ten, with decoded pixels up to 20 levels apart (its other decisions are deterministic; the
thread count stays automatic)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction

import av
import numpy as np

from mugv.video.reader import as_fraction

MILLISECONDS = Fraction(1, 1000)
# The only libx264 setting that made repeated encodes of the same frames differ (see above).
DETERMINISTIC_X264 = "mbtree=0"


def write_mp4(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: float,
    crf: int = 18,
    preset: str = "veryfast",
    rotation: int = 0,
    codec: str = "libx264",
    frame_times: Iterable[float] | None = None,
) -> int:
    """Encode frames ([H, W, 3] uint8 RGB, even sizes) and return how many were written.

    `rotation` stores a display matrix (counter-clockwise degrees) instead of rotating pixels;
    `frame_times` (seconds) gives each frame its own timestamp, for variable-frame-rate output."""
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError("write_mp4 needs at least one frame")
    height, width = first.shape[:2]
    times = iter(frame_times) if frame_times is not None else None
    count = 0
    with av.open(str(path), "w", format="mp4") as container:
        rate = as_fraction(fps)
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": preset, "x264-params": DETERMINISTIC_X264}
        if times is not None:
            stream.codec_context.time_base = stream.time_base = MILLISECONDS
        if rotation:
            stream.set_display_rotation(rotation)
        for array in _chain(first, frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            if times is not None:
                frame.pts = int(round(next(times) * 1000))
                frame.time_base = MILLISECONDS
            for packet in stream.encode(frame):
                container.mux(packet)
            count += 1
        for packet in stream.encode():
            container.mux(packet)
    return count


def _chain(first: np.ndarray, rest: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    yield first
    yield from rest
