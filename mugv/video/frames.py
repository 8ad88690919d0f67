"""Frame sampling and geometric transforms on uint8 RGB frames ([H, W, 3] or [T, H, W, 3])."""

from __future__ import annotations

import cv2
import numpy as np


def fit_short_side(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) scaled so the shorter side is `short_side`, both even (codec friendly),
    never upscaled."""
    scale = min(1.0, short_side / min(width, height))
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def sample_indices(start: int, stop: int, count: int) -> np.ndarray:
    """`count` evenly spaced frame indices in [start, stop), centred in equal parts of the range."""
    length = stop - start
    if length <= 0 or count <= 0:
        return np.zeros(0, dtype=np.int64)
    count = min(count, length)
    return start + ((np.arange(count) + 0.5) * length / count).astype(np.int64)


def resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize one frame; area averaging when shrinking (no aliasing), bilinear when growing."""
    shrinking = width * height < frame.shape[0] * frame.shape[1]
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def half_size(frames: np.ndarray) -> np.ndarray:
    """One frame or a stack at exactly half the size (2x2 pixel averages; fast for even sizes)."""
    height, width = frames.shape[-3:-1]
    size = (max(1, width // 2), max(1, height // 2))
    if frames.ndim == 3:
        return cv2.resize(frames, size, interpolation=cv2.INTER_AREA)
    return shrink_stack(frames, *size)


def shrink_stack(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Every frame of a [T, H, W] or [T, H, W, C] stack shrunk to `width` x `height` by area
    averaging, in one OpenCV call on the frames laid end to end: each frame maps onto exactly
    `height` output rows, so the result is the frame-by-frame one."""
    if not len(frames):
        return np.zeros((0, height, width, *frames.shape[3:]), np.uint8)
    rows = np.ascontiguousarray(frames).reshape(-1, *frames.shape[2:])
    shrunk = cv2.resize(rows, (width, height * len(frames)), interpolation=cv2.INTER_AREA)
    return shrunk.reshape(len(frames), height, width, *frames.shape[3:])


def resize_short_side(frames: np.ndarray, short_side: int) -> np.ndarray:
    """Resize one frame or a stack so the shorter side is `short_side` (aspect kept)."""
    batch = frames if frames.ndim == 4 else frames[None]
    height, width = batch.shape[1:3]
    new_w, new_h = fit_short_side(width, height, short_side)
    out = np.stack([resize(f, new_w, new_h) for f in batch])
    return out if frames.ndim == 4 else out[0]


def center_crop(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """The central `width` x `height` window of one frame or a stack."""
    h, w = frames.shape[-3:-1]
    if width > w or height > h:
        raise ValueError(f"crop {width}x{height} exceeds frame {w}x{h}")
    top, left = (h - height) // 2, (w - width) // 2
    return frames[..., top : top + height, left : left + width, :]


def resize_to_fill(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale so the frame covers `width` x `height`, then center-crop to it (the I2V convention)."""
    batch = frames if frames.ndim == 4 else frames[None]
    h, w = batch.shape[1:3]
    scale = max(width / w, height / h)
    new_w, new_h = max(width, int(np.ceil(w * scale))), max(height, int(np.ceil(h * scale)))
    out = center_crop(np.stack([resize(f, new_w, new_h) for f in batch]), width, height)
    return out if frames.ndim == 4 else out[0]


def to_gray(frames: np.ndarray) -> np.ndarray:
    """Luma (BT.601, OpenCV's weights) of one RGB frame or a stack, as uint8."""
    if frames.ndim == 3:
        return cv2.cvtColor(frames, cv2.COLOR_RGB2GRAY)
    if len(frames) == 0:
        return np.zeros(frames.shape[:3], np.uint8)
    # One call for the stack laid end to end: the conversion is per pixel.
    return cv2.cvtColor(np.ascontiguousarray(frames).reshape(-1, *frames.shape[2:]), cv2.COLOR_RGB2GRAY).reshape(frames.shape[:3])
