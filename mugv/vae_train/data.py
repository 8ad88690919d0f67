"""Training and evaluation media for the VAE: discovery, decoding once, deterministic sampling.

Sources are folders (searched recursively), media files, or manifests (``.txt``: one path per
line, ``#`` comments; ``.jsonl``: objects with a ``"path"``). Every file is decoded once, resized
to fill the training size and center-cropped, and kept in memory as uint8. A file that cannot be
used is skipped and recorded with its reason (:class:`Rejection`); no usable file is an error.

Sampling is a pure function of (seed, step), so a resumed run draws exactly the batches an
uninterrupted run would have drawn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mugv.errors import MugvError
from mugv.vae_train.config import VAEDataConfig
from mugv.video import VideoError, decode, resize_to_fill
from mugv.video.reader import VIDEO_EXTENSIONS

IMAGE_EXTENSIONS = frozenset(".png .jpg .jpeg .webp .bmp .tif .tiff".split())
MANIFEST_EXTENSIONS = frozenset((".txt", ".jsonl", ".parquet"))


class MediaError(MugvError, ValueError):
    """Training media cannot be used at all (no sources, nothing readable)."""


@dataclass
class Rejection:
    path: str
    reason: str


@dataclass
class MediaItem:
    path: str
    frames: np.ndarray  # uint8 (T, H, W, 3) at the target size
    is_image: bool


def discover(sources: list[str]) -> list[Path]:
    """Media paths named by folders, files and manifests, in a stable order, without repeats."""
    if not sources:
        raise MediaError("no media sources given (data.sources, or --source)")
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS | IMAGE_EXTENSIONS)
        elif path.suffix.lower() in MANIFEST_EXTENSIONS and path.is_file():
            found += _read_manifest(path)
        else:
            found.append(path)  # a missing or unreadable file is rejected, with its reason, on load
    return list(dict.fromkeys(found))


def _read_manifest(path: Path) -> list[Path]:
    if path.suffix.lower() == ".parquet":  # a `mugv curate` manifest: the videos of its kept clips
        import pandas as pd

        table = pd.read_parquet(path, columns=["path", "status"])
        return [Path(p) for p in dict.fromkeys(table.loc[table["status"] == "kept", "path"])]
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if path.suffix.lower() == ".jsonl":
            try:
                line = json.loads(line)["path"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise MediaError(f"{path}:{number}: expected a JSON object with a \"path\" ({exc})") from exc
        entry = Path(line)
        entries.append(entry if entry.is_absolute() else path.parent / entry)
    return entries


def load_frames(path: Path, height: int, width: int, max_frames: int = 0) -> tuple[np.ndarray, bool]:
    """uint8 (T, height, width, 3) frames of a video or an image (T = 1), and whether it is an
    image. Raises ValueError naming the file and the reason when it cannot be used."""
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"{path}: unreadable image ({exc})") from exc
        return resize_to_fill(array, width, height)[None], True
    try:
        video = decode(path, short_side=max(height, width), max_frames=max_frames)
    except VideoError as exc:
        raise ValueError(f"{path}: unreadable video ({exc})") from exc
    if len(video.frames) == 0:
        raise ValueError(f"{path}: no decodable frames" + (f" ({video.decode_error})" if video.decode_error else ""))
    return resize_to_fill(video.frames, width, height), False


def to_model_range(frames: np.ndarray) -> torch.Tensor:
    """uint8 (..., T, H, W, 3) -> float (..., 3, T, H, W) in [-1, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1.0)
    return tensor.movedim(-1, -4)


class MediaPool:
    """Decoded media and deterministic video / image batches drawn from it.

    Media are kept at `cache_scale` times the training size; each clip is a random
    height x width window of it (the same for all its frames), optionally mirrored and with its
    colour channels permuted, so a few videos yield many different training clips."""

    def __init__(
        self,
        items: list[MediaItem],
        rejections: list[Rejection],
        height: int,
        width: int,
        random_flip: bool = False,
        permute_colors: bool = False,
    ) -> None:
        self.items = items
        self.rejections = rejections
        self.height, self.width = height, width
        self.random_flip = random_flip
        self.permute_colors = permute_colors
        self.videos = [i for i in items if not i.is_image]
        self.images = [i for i in items if i.is_image]

    @classmethod
    def load(
        cls,
        sources: list[str],
        height: int,
        width: int,
        max_frames: int = 0,
        cache_scale: float = 1.0,
        random_flip: bool = False,
        permute_colors: bool = False,
    ) -> "MediaPool":
        cache_h, cache_w = (max(size, 2 * round(size * cache_scale / 2)) for size in (height, width))
        items, rejections = [], []
        for path in discover(sources):
            try:
                frames, is_image = load_frames(path, cache_h, cache_w, max_frames)
            except ValueError as exc:
                rejections.append(Rejection(str(path), str(exc)))
                continue
            items.append(MediaItem(str(path), frames, is_image))
        if not items:
            reasons = "; ".join(r.reason for r in rejections[:5])
            raise MediaError(f"no usable media in {sources}" + (f": {reasons}" if reasons else ""))
        return cls(items, rejections, height, width, random_flip, permute_colors)

    @classmethod
    def from_config(cls, data: VAEDataConfig) -> "MediaPool":
        return cls.load(
            data.sources, data.height, data.width, data.max_frames_per_video,
            data.cache_scale, data.random_flip, data.permute_colors,
        )  # fmt: skip

    def _augment(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random training-size window of (T, H, W, 3) frames, maybe mirrored and recoloured."""
        top = rng.integers(frames.shape[1] - self.height + 1)
        left = rng.integers(frames.shape[2] - self.width + 1)
        frames = frames[:, top : top + self.height, left : left + self.width]
        if self.random_flip and rng.random() < 0.5:
            frames = frames[:, :, ::-1]
        if self.permute_colors:
            frames = frames[..., rng.permutation(3)]
        return frames

    def video_batch(self, seed: int, step: int, batch_size: int, clip_frames: int, stride: int = 1) -> torch.Tensor:
        """(B, 3, clip_frames, H, W) clips at random positions of random videos. Videos shorter
        than the clip are used only when no video is long enough, looping their frames."""
        span = (clip_frames - 1) * stride + 1
        pool = [v for v in self.videos if len(v.frames) >= span] or self.videos
        if not pool:
            raise MediaError("no videos were loaded; set data.video_batch_size = 0 to train on images only")
        rng = np.random.default_rng([seed, step, 0])
        clips = []
        for _ in range(batch_size):
            video = pool[rng.integers(len(pool))]
            start = rng.integers(max(len(video.frames) - span, 0) + 1)
            index = (start + stride * np.arange(clip_frames)) % len(video.frames)
            clips.append(self._augment(video.frames[index], rng))
        return to_model_range(np.stack(clips))

    def image_batch(self, seed: int, step: int, batch_size: int) -> torch.Tensor:
        """(B, 3, 1, H, W) from image files, or single video frames when there are no images."""
        rng = np.random.default_rng([seed, step, 1])
        pool = self.images or self.videos
        frames = []
        for _ in range(batch_size):
            item = pool[rng.integers(len(pool))]
            index = rng.integers(len(item.frames))
            frames.append(self._augment(item.frames[index : index + 1], rng))
        return to_model_range(np.stack(frames))
