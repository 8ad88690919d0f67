"""Open a media file once with PyAV: probe its metadata, then decode its frames as uint8 RGB.

Every failure is a `VideoError` carrying a short machine-readable `reason` (for manifests) and a
human message, so a curation run can record why a file was skipped instead of crashing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from mugv.errors import MugvError
from mugv.video.frames import fit_short_side


class VideoError(MugvError):
    """A file that cannot be used as video; `reason` is a stable code such as `no_video_stream`."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message


@dataclass
class VideoInfo:
    """Container-level facts about a video, as displayed (width/height after rotation)."""

    path: str
    container: str
    codec: str
    width: int
    height: int
    rotation: int  # counter-clockwise degrees from the display matrix; already applied to width/height
    fps: float  # average frame rate
    duration: float  # seconds; estimated from frame count and fps when the container does not say
    frame_count: int  # from the container; 0 when it does not say
    has_audio: bool
    bit_rate: int = 0

    @property
    def pixels(self) -> int:
        return self.width * self.height


class YuvFrames:
    """Frames kept as scaled, YUV 4:2:0 [T, H*3/2, W] before rotation (half the memory of RGB),
    that read as uint8 RGB [T, H, W, 3] upright: indexing with an int or with indices converts
    only those frames, a slice stays lazy, and `np.asarray` converts them all."""

    ndim = 4
    dtype = np.dtype(np.uint8)

    def __init__(self, planar: np.ndarray, turns: int = 0):
        self._planar = planar
        self._turns = turns
        height, width = planar.shape[1] * 2 // 3, planar.shape[2]
        self.shape = (len(planar), *((width, height) if turns % 2 else (height, width)), 3)

    def __len__(self) -> int:
        return len(self._planar)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return YuvFrames(self._planar[key], self._turns)
        if np.ndim(key) == 0:
            return self._rgb(self._planar[key])
        picked = self._planar[np.asarray(key)]
        return np.stack([self._rgb(p) for p in picked]) if len(picked) else np.zeros((0, *self.shape[1:]), np.uint8)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[np.arange(len(self))] if dtype is None else self[np.arange(len(self))].astype(dtype)

    def _rgb(self, planar: np.ndarray) -> np.ndarray:
        rgb = cv2.cvtColor(planar, cv2.COLOR_YUV2RGB_I420)
        return np.ascontiguousarray(np.rot90(rgb, k=self._turns)) if self._turns else rgb


@dataclass
class DecodedVideo:
    """All frames of a video at analysis resolution, decoded once and shared by every stage."""

    info: VideoInfo
    frames: np.ndarray | YuvFrames  # uint8 [T, H, W, 3] RGB, rotation applied
    times: np.ndarray  # float64 [T] presentation time of each frame in seconds, from 0
    decode_error: str = ""  # why decoding stopped early (corrupt or truncated data); frames so far are kept
    half: np.ndarray | None = None  # uint8 [T, H/2, W/2, 3] RGB, 2x2 averages of `frames` (analysis decode)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def is_vfr(self) -> bool:
        """True when frame intervals vary by more than 10 % around their median."""
        if len(self.times) < 3:
            return False
        gaps = np.diff(self.times)
        median = float(np.median(gaps))
        return median > 0 and float(np.max(np.abs(gaps - median))) > 0.1 * median

    @property
    def measured_fps(self) -> float:
        """Frames per second from the decoded timestamps (robust for variable frame rate)."""
        if len(self.times) < 2 or self.times[-1] <= self.times[0]:
            return self.info.fps
        return (len(self.times) - 1) / float(self.times[-1] - self.times[0])


class VideoReader:
    """One open file: `info` is read on open (decoding only the first frame, to learn the
    rotation and prove the stream decodes), `decode()` continues from there without reopening.

    `threads`: decoder and scaler threads, 0 for FFmpeg's choice (one per core). Give 1 where
    the parallelism comes from one process per core: FFmpeg's threads spend 15-20 % more CPU
    time on the same frames (measured on 2 cores, H.264 at 272p and 720p)."""

    def __init__(self, path: str | os.PathLike, threads: int = 0):
        self.path = str(path)
        self.threads = threads
        if not os.path.exists(self.path):
            raise VideoError("missing_file", self.path)
        if os.path.getsize(self.path) == 0:
            raise VideoError("empty_file", "0 bytes")
        try:
            self._container = av.open(self.path, metadata_errors="ignore")
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
            raise VideoError("unreadable", _short(exc)) from exc
        try:
            if not self._container.streams.video:
                reason = "audio_only" if self._container.streams.audio else "no_video_stream"
                raise VideoError(reason, f"streams: {[s.type for s in self._container.streams]}")
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "NONE" if threads == 1 else "AUTO"
            self._stream.codec_context.thread_count = threads
            self._frames = self._container.decode(self._stream)
            try:
                self._first = next(self._frames)
            except StopIteration as exc:
                raise VideoError("no_frames", "the video stream holds no decodable frame") from exc
            except (av.error.FFmpegError, ValueError) as exc:
                raise VideoError("decode_failed", _short(exc)) from exc
            self.info = self._read_info()
        except BaseException:
            self._container.close()
            raise

    def _read_info(self) -> VideoInfo:
        stream, container = self._stream, self._container
        rotation = int(round(self._first.rotation or 0)) % 360
        width, height = self._first.width, self._first.height
        if rotation in (90, 270):
            width, height = height, width
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        frame_count = int(stream.frames or 0)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = frame_count / fps if fps else 0.0
        return VideoInfo(
            path=self.path,
            container=container.format.name,
            codec=stream.codec_context.name,
            width=width,
            height=height,
            rotation=rotation,
            fps=fps,
            duration=duration,
            frame_count=frame_count,
            has_audio=bool(container.streams.audio),
            bit_rate=int(container.bit_rate or 0),
        )

    def decode(self, short_side: int = 0, max_frames: int = 0, analysis: bool = False) -> DecodedVideo:
        """Every frame, resized so its shorter side is `short_side` (0: native size), at most
        `max_frames` (0: no limit). Corrupt data ends decoding early, noted in `decode_error`.

        `analysis`: for stages that look at every frame small and at a few frames in full, as
        curation does. Frames stay in YUV (`YuvFrames`: RGB only for the frames indexed), and
        `half` holds every frame at half size in RGB, made from the YUV while it is in cache."""
        info = self.info
        out_w, out_h = fit_short_side(info.width, info.height, short_side) if short_side else (info.width, info.height)
        # The scaler works in coded (pre-rotation) orientation; rotate afterwards.
        coded_w, coded_h = (out_h, out_w) if info.rotation in (90, 270) else (out_w, out_h)
        turns = {0: 0, 90: 1, 180: 2, 270: 3}.get(info.rotation, 0)
        capacity = info.frame_count or int(info.duration * info.fps) or 64
        frames = _FrameBuffer(capacity, (coded_h * 3 // 2, coded_w) if analysis else (out_h, out_w, 3))
        halves = _FrameBuffer(capacity, (out_h // 2, out_w // 2, 3)) if analysis else None
        # One scaler for all frames: setting one up costs as much as scaling a frame.
        scaler = VideoReformatter()
        scaled = np.empty((coded_h * 3 // 2, coded_w), np.uint8)  # the frame at hand in YUV, for the RGB decode
        times: list[float] = []
        error = ""
        origin: float | None = None
        frame = self._first
        while frame is not None:
            if halves is not None:  # the analysis decode
                planar = _scale(scaler, frame, self.threads, out=frames.next_slot())
                if turns:
                    halves.next_slot()[:] = np.rot90(_half_size_rgb(planar, coded_h, coded_w), k=turns)
                else:
                    _half_size_rgb(planar, coded_h, coded_w, out=halves.next_slot())
            elif turns:
                planar = _scale(scaler, frame, self.threads, out=scaled)
                frames.next_slot()[:] = np.rot90(cv2.cvtColor(planar, cv2.COLOR_YUV2RGB_I420), k=turns)
            else:
                cv2.cvtColor(_scale(scaler, frame, self.threads, out=scaled), cv2.COLOR_YUV2RGB_I420, dst=frames.next_slot())
            t = float(frame.time) if frame.time is not None else (len(times) / info.fps if info.fps else 0.0)
            origin = t if origin is None else origin
            times.append(t - origin)
            if max_frames and len(frames) >= max_frames:
                break
            try:
                frame = next(self._frames, None)
            except (av.error.FFmpegError, ValueError) as exc:
                error = _short(exc)
                break
        span = times[-1] + (1.0 / info.fps if info.fps else 0.0)
        if not error and not (max_frames and len(frames) >= max_frames) and span < 0.9 * info.duration:
            error = f"truncated: decoded {len(frames)} frames ({span:.2f} s) of a declared {info.duration:.2f} s"
        return DecodedVideo(
            info=info,
            frames=YuvFrames(frames.view(), turns) if analysis else frames.view(),
            times=np.asarray(times, np.float64),
            decode_error=error,
            half=None if halves is None else halves.view(),
        )

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def probe(path: str | os.PathLike) -> VideoInfo:
    """Metadata of a video file; raises `VideoError` with a reason when it is not usable video."""
    with VideoReader(path) as reader:
        return reader.info


def decode(path: str | os.PathLike, short_side: int = 0, max_frames: int = 0) -> DecodedVideo:
    """Open, probe and decode a file in one pass (see `VideoReader.decode`)."""
    with VideoReader(path) as reader:
        return reader.decode(short_side=short_side, max_frames=max_frames)


class _FrameBuffer:
    """Frames written straight into one preallocated array (no list-then-stack copy), grown by
    doubling when the container under-reported its frame count."""

    def __init__(self, capacity: int, shape: tuple[int, int, int]):
        # Bounded: a container can claim any frame count.
        self._data = np.empty((min(max(1, capacity + 2), 4096), *shape), np.uint8)
        self._count = 0

    def next_slot(self) -> np.ndarray:
        """The next frame's place in the buffer, for the caller to write into."""
        if self._count == len(self._data):
            self._data = np.concatenate([self._data, np.empty_like(self._data)])
        self._count += 1
        return self._data[self._count - 1]

    def __len__(self) -> int:
        return self._count

    def view(self) -> np.ndarray:
        return self._data[: self._count]


def _scale(scaler: VideoReformatter, frame: av.VideoFrame, threads: int, out: np.ndarray) -> np.ndarray:
    """The frame as YUV 4:2:0 in `out` ([H*3/2, W], the layout OpenCV converts to RGB about 2.5x
    faster than swscale scaling straight into RGB), scaled to W x H with swscale's area filter
    (anti-aliased, and on non-integer ratios twice as fast as its bilinear one). Sizes are even
    (see `fit_short_side`). The planes are copied straight into `out`: `to_ndarray` costs 15x
    more."""
    height, width = out.shape[0] * 2 // 3, out.shape[1]
    scaled = scaler.reformat(frame, width=width, height=height, format="yuv420p", interpolation="AREA", threads=threads)
    chroma = out[height:].reshape(2, height // 2, width // 2)
    for plane, target in zip(scaled.planes, (out[:height], chroma[0], chroma[1])):
        target[:] = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[: target.shape[0], : target.shape[1]]
    return out


# OpenCV's YUV 4:2:0 -> RGB (BT.601, limited range; its fixed-point constants / 2^20) as an
# affine map on [Y, U, V, 1].
_YUV_TO_RGB = np.array(
    [[1220542, 0, 1673527], [1220542, -409993, -852492], [1220542, 2116026, 0]], np.float64
) / 2**20
_YUV_TO_RGB = np.concatenate([_YUV_TO_RGB, -_YUV_TO_RGB @ np.array([[16.0], [128.0], [128.0]])], axis=1).astype(np.float32)


def _half_size_rgb(planar: np.ndarray, height: int, width: int, out: np.ndarray | None = None) -> np.ndarray:
    """RGB at half size straight from YUV 4:2:0: luma averaged over 2x2 blocks, and the chroma
    planes, already one sample per 2x2 block. As the conversion is affine, this is the 2x2
    average of the full-size RGB frame up to rounding, without converting every pixel."""
    luma = cv2.resize(planar[:height], (width // 2, height // 2), interpolation=cv2.INTER_AREA)
    chroma = planar[height:].reshape(2, height // 2, width // 2)
    return cv2.transform(cv2.merge([luma, chroma[0], chroma[1]]), _YUV_TO_RGB, dst=out)


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).replace("\n", " ") or type(exc).__name__
    return text[:limit]


def as_fraction(fps: float) -> Fraction:
    """A frame rate as a rational PyAV accepts (29.97 -> 30000/1001)."""
    return Fraction(fps).limit_denominator(1001)


def is_media_path(path: Path) -> bool:
    """Whether a path looks like it should be curated when scanning a folder (by extension)."""
    return path.suffix.lower() in VIDEO_EXTENSIONS


VIDEO_EXTENSIONS = frozenset(
    [
        ".mp4",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".m4v",
        ".mpg",
        ".mpeg",
        ".ts",
        ".mts",
        ".m2ts",
        ".flv",
        ".wmv",
        ".3gp",
        ".ogv",
        ".gif",
    ]
)
