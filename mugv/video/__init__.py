"""Shared video I/O: probe, decode once into uint8 RGB frames, sample and resize frames, write mp4."""

from mugv.video.frames import (
    center_crop,
    fit_short_side,
    half_size,
    resize,
    resize_short_side,
    resize_to_fill,
    sample_indices,
    shrink_stack,
    to_gray,
)
from mugv.video.reader import DecodedVideo, VideoError, VideoInfo, VideoReader, YuvFrames, decode, probe
from mugv.video.writer import write_mp4

__all__ = [
    "DecodedVideo",
    "VideoError",
    "VideoInfo",
    "VideoReader",
    "YuvFrames",
    "center_crop",
    "decode",
    "fit_short_side",
    "half_size",
    "probe",
    "resize",
    "resize_short_side",
    "resize_to_fill",
    "sample_indices",
    "shrink_stack",
    "to_gray",
    "write_mp4",
]
