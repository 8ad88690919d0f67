"""Size buckets: the (frames, height, width) shapes clips are resized and cropped to before encoding.

Every batch holds samples of one bucket, so a batch can hold more than one sample while clips vary
in resolution, aspect ratio and length. A clip goes to the bucket of its kind (image: 1 frame,
video: more) whose aspect ratio is nearest its own, then the longest that the clip can fill, then
the largest area that does not upscale it (the smallest bucket when every one would).

Bucket sizes are in pixels; height and width must be multiples of 16 (8x VAE, 2x2 patches) and
video frame counts 1 + 8k (the VAE turns them into 1 + k latent frames).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Bucket:
    frames: int
    height: int
    width: int

    @property
    def name(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"

    @property
    def aspect(self) -> float:
        return self.width / self.height

    @property
    def kind(self) -> str:
        return "image" if self.frames == 1 else "video"

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(frames, height, width) of the 8x8x8 VAE's latents for this bucket."""
        return 1 + (self.frames - 1) // 8, self.height // 8, self.width // 8

    @classmethod
    def parse(cls, text: str) -> "Bucket":
        try:
            frames, height, width = (int(part) for part in text.lower().strip().split("x"))
        except ValueError as exc:
            raise ValueError(f"bucket {text!r} must look like FRAMESxHEIGHTxWIDTH, e.g. 17x256x448") from exc
        return cls(frames, height, width)

    def validate(self) -> None:
        if self.height % 16 or self.width % 16 or self.height < 16 or self.width < 16:
            raise ValueError(f"bucket {self.name}: height and width must be positive multiples of 16")
        if self.frames < 1 or (self.frames - 1) % 8:
            raise ValueError(f"bucket {self.name}: frames must be 1 (an image) or 1 + 8k (a video)")


# (height, width) per aspect ratio 16:9, 4:3, 1:1, 3:4, 9:16, all multiples of 16.
ASPECT_SIZES: dict[str, list[tuple[int, int]]] = {
    "256p": [(256, 448), (256, 336), (256, 256), (336, 256), (448, 256)],
    "360p": [(352, 640), (368, 480), (368, 368), (480, 368), (640, 352)],
    "480p": [(480, 848), (480, 640), (480, 480), (640, 480), (848, 480)],
    "720p": [(720, 1280), (720, 960), (720, 720), (960, 720), (1280, 720)],
}


def default_buckets(
    resolutions: tuple[str, ...] = ("256p", "360p"), frames: tuple[int, ...] = (1, 49, 73)
) -> list[Bucket]:
    """A table of every (frames, size) pair over the named resolutions; 1 frame means images."""
    return [Bucket(f, h, w) for res in resolutions for (h, w) in ASPECT_SIZES[res] for f in frames]


def parse_buckets(text: str) -> list[Bucket]:
    """`"1x256x256,17x256x448"` -> buckets (validated)."""
    buckets = [Bucket.parse(part) for part in text.split(",") if part.strip()]
    if not buckets:
        raise ValueError("the bucket table is empty")
    for bucket in buckets:
        bucket.validate()
    return buckets


def assign_bucket(buckets: list[Bucket], frames: int, height: int, width: int) -> Bucket | None:
    """The bucket for a clip of `frames` x `height` x `width` pixels, or None when no bucket of
    its kind is short enough for it (a 10-frame clip cannot fill a 17-frame bucket)."""
    is_image = frames == 1
    candidates = [b for b in buckets if (b.frames == 1) == is_image and b.frames <= frames]
    if not candidates:
        return None
    log_aspect = math.log(width / height)
    best_aspect = min(abs(math.log(b.aspect) - log_aspect) for b in candidates)
    candidates = [b for b in candidates if abs(math.log(b.aspect) - log_aspect) <= best_aspect + 1e-9]
    longest = max(b.frames for b in candidates)
    candidates = [b for b in candidates if b.frames == longest]
    fitting = [b for b in candidates if b.height <= height and b.width <= width]
    if fitting:
        return max(fitting, key=lambda b: (b.height * b.width, b.width))
    return min(candidates, key=lambda b: (b.height * b.width, b.width))
