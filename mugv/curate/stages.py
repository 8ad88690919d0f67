"""The per-video and per-clip stages of curation, as functions both backends compose.

probe + split (open the file once, a remote one copied once: read its header, screen it, decode
it at analysis size, find shot boundaries, cut candidate clips) -> score (every filter, a caption
when no model is needed, hashes) -> caption (the batched captioning model, for kept clips without
an existing caption).

The process backend probes, splits and scores a video in one worker (`analyse_video`) and
captions in the parent, batches of clips across videos at a time (`caption_as_they_come`); the
Ray backend (`ray_pipeline.py`) runs each as a Ray Data stage. Every failure inside a stage
becomes the video's one `internal_error` row, never an error.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mugv.curate import aesthetic, caption, dedup, motion, postprocess, scenes, sharpness, storage, transitions
from mugv.curate.config import CurateConfig
from mugv.curate.inputs import InputItem
from mugv.curate.manifest import KEPT, REJECTED, complete
from mugv.curate.screen import screen_decoded_duration, screen_info, screen_table
from mugv.video import DecodedVideo, VideoError, VideoReader, YuvFrames
from mugv.video.reader import is_media_path


@dataclass
class Candidate:
    """A candidate clip between split and score: its row so far and its decoded frames."""

    row: dict
    frames: YuvFrames | np.ndarray  # analysis size, RGB as indexed
    small: np.ndarray  # the same at half size


@dataclass
class Scored:
    """A clip's complete row; `caption_frames` is set while it waits for the captioning model."""

    row: dict
    caption_frames: np.ndarray | None = None


@dataclass
class AnalysedVideo:
    """A video's rows after probe, split and score; `waiting` holds (row position, frames) of the
    kept clips that wait for the captioning model."""

    rows: list[dict]
    waiting: list[tuple[int, np.ndarray]] = field(default_factory=list)


def video_base(item: InputItem, vid: str) -> dict:
    """The columns every row of a video carries from its input (`vid`: `runner.video_id`)."""
    return {"video_id": vid, "path": item.path, "source": item.source, "license": item.license, "input_caption": item.caption}


def video_row(base: dict, reason: str, error: str = "", **fields) -> dict:
    """The one rejected row of a video that yields no candidate clip."""
    return complete(
        {
            **base,
            **fields,
            "clip_id": f"{base['video_id']}--1",
            "clip_index": -1,
            "status": REJECTED,
            "reason": reason,
            "error": error,
        }
    )


def internal_error_row(base: dict, exc: BaseException) -> dict:
    """A bug or an exotic file must not stop a million-video run: the video gets this row."""
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return video_row(base, "internal_error", detail[:500])


# --------------------------------------------------------------------------------------------
# The stages
# --------------------------------------------------------------------------------------------


def screen_unopened(item: InputItem, cfg: CurateConfig, base: dict) -> list[dict]:
    """The rejection of a file judged without opening it (by its extension, or by the input
    table's source and licence); [] when it is to be opened."""
    if not is_media_path(Path(item.path)):
        used = cfg.caption.use_existing and caption.is_caption_sidecar(item.path)
        return [video_row(base, "caption_sidecar" if used else "not_a_video")]
    if reason := screen_table(cfg.screen, item.source, item.license):
        return [video_row(base, reason)]
    return []


def probe(reader: VideoReader, cfg: CurateConfig, base: dict) -> tuple[dict, list[dict]]:
    """(the header's manifest columns, the video's rejection: [] when it is to be decoded)."""
    info = reader.info
    meta = {
        "width": info.width,
        "height": info.height,
        "rotation": info.rotation,
        "codec": info.codec,
        "container": info.container,
        "has_audio": info.has_audio,
        "video_duration": info.duration,
    }
    if reason := screen_info(cfg.screen, info):
        return meta, [video_row(base, reason, **meta)]
    return meta, []


def probe_and_split(item: InputItem, cfg: CurateConfig, base: dict) -> tuple[list[dict], list[Candidate]]:
    """(finished rows: the video's rejection or its too-short clips, candidates to score)."""
    if rejected := screen_unopened(item, cfg, base):
        return rejected, []
    with ExitStack() as open_files:
        try:
            local = open_files.enter_context(storage.local_copy(item.path, cfg.run.storage_options, cfg.run.cache_dir))
            reader = open_files.enter_context(VideoReader(local, threads=1))  # one worker per core: decode on this one
        except VideoError as exc:  # vanished since it was listed, a failed download, not a video
            return [video_row(base, exc.reason, exc.message)], []
        meta, rejected = probe(reader, cfg, base)
        if rejected:
            return rejected, []
        video = reader.decode(short_side=cfg.decode.short_side, analysis=True)
    return split(video, cfg, base, meta)


def split(video: DecodedVideo, cfg: CurateConfig, base: dict, meta: dict) -> tuple[list[dict], list[Candidate]]:
    """(finished rows: the video's rejection or its too-short clips, candidates to score), in
    clip order once merged by `clip_index`."""
    fps = video.measured_fps
    frame_time = 1.0 / fps if fps > 0 else 0.04
    duration = float(video.times[-1] + frame_time) if video.num_frames else 0.0
    meta = {**meta, "fps": fps, "video_frames": video.num_frames, "video_duration": duration, "vfr": video.is_vfr,
            "error": video.decode_error}  # fmt: skip
    if reason := screen_decoded_duration(max(cfg.screen.min_duration, cfg.clips.min_seconds), duration):
        # A file that stopped early is reported as broken rather than as merely short.
        return [video_row(base, "truncated" if video.decode_error else reason, **meta)], []

    # One half-size copy, made while decoding, serves the shot-boundary detectors, motion and
    # the temporal post-processing cues, which need every frame but not every pixel
    # (PySceneDetect itself works on frames about 256 pixels wide by default).
    small = video.half
    found = scenes.find_transitions(cfg.scenes, small, fps, transitions.thumbnails(small))
    finished, candidates = [], []
    for index, span in enumerate(scenes.cut_clips(cfg.clips, found, video.times, fps)):
        row = {
            **base,
            **meta,
            "clip_id": f"{base['video_id']}-{index:04d}",
            "clip_index": index,
            "start_frame": span.start,
            "end_frame": span.stop,
            "start_time": span.start_time,
            "end_time": span.end_time,
            "duration": span.duration,
            "boundary_before": span.before,
            "boundary_after": span.after,
        }
        if span.duration < cfg.clips.min_seconds - 1e-6:
            finished.append(complete({**row, "status": REJECTED, "reason": "clip_too_short"}))
        else:
            candidates.append(Candidate(row, video.frames[span.start : span.stop], small[span.start : span.stop]))
    return finished, candidates


def score(cfg: CurateConfig, clip: Candidate) -> Scored:
    """Every filter's score and verdict, then, for the clips that pass, hashes and a caption:
    an existing or template one at once, else the frames the captioning model will be shown."""
    frames, row = clip.frames, clip.row
    scores: dict = {}
    reasons: list[str] = []
    if cfg.sharpness.enabled:
        scores["sharpness"] = sharpness.sharpness_score(cfg.sharpness, frames)
        reasons += sharpness.sharpness_reasons(cfg.sharpness, scores["sharpness"])
    # Motion and the temporal post-processing cues share one luma copy about 128 pixels wide:
    # Farneback flow there costs a quarter of half-size flow and reads global pans of 0.5-20
    # px/frame as well (see docs/curate.md).
    grays = postprocess.small_grays(clip.small)
    if cfg.motion.enabled:
        scores["motion"] = motion.motion_score(cfg.motion, grays, scale=frames.shape[1] / grays.shape[1])
        reasons += motion.motion_reasons(cfg.motion, scores["motion"])
    if cfg.aesthetic.enabled:
        scores["aesthetic"] = aesthetic.aesthetic_score(cfg.aesthetic, frames)
        scores["aesthetic_scorer"] = cfg.aesthetic.scorer
        reasons += aesthetic.aesthetic_reasons(cfg.aesthetic, scores["aesthetic"])
    if cfg.postprocess.enabled:
        measured = postprocess.postprocess_scores(cfg.postprocess, frames, grays)
        scores.update(measured)
        reasons += postprocess.postprocess_reasons(cfg.postprocess, measured, frames)
        reasons += postprocess.judge_reasons(cfg.postprocess, frames, {**row, **scores})
    scores["quality"] = (scores.get("aesthetic") or 0.0) + min(1.0, row["duration"] / cfg.clips.max_seconds)
    if reasons:
        return Scored(complete({**row, **scores, "status": REJECTED, "reason": ";".join(reasons)}))
    row = complete({**row, **scores, "status": KEPT, "reason": "", "phash": dedup.frame_hashes(frames)})
    found = caption.caption_without_model(cfg.caption, frames, row)
    if found is not None:
        row["caption"], row["caption_source"] = found
        return Scored(row)
    return Scored(row, caption.model_frames(cfg.caption, frames))


def fill_captions(cfg: CurateConfig, rows: list[dict], frames: list[np.ndarray]) -> None:
    """Caption `rows` (in place) from their frames with one batched call of the model."""
    if rows:
        captioner = caption.captioner_for(cfg.caption)
        for row, text in zip(rows, captioner.caption_batch(frames, rows), strict=True):
            row["caption"], row["caption_source"] = text, cfg.caption.captioner


# --------------------------------------------------------------------------------------------
# The process backend: a video in a worker, captions in batches in the parent
# --------------------------------------------------------------------------------------------


def analyse_video(item: InputItem, cfg: CurateConfig, base: dict) -> AnalysedVideo:
    """Probe, split and score one video."""
    try:
        finished, candidates = probe_and_split(item, cfg, base)
        scored = [score(cfg, clip) for clip in candidates]
    except Exception as exc:
        return AnalysedVideo([internal_error_row(base, exc)])
    rows = sorted(finished + [s.row for s in scored], key=lambda r: r["clip_index"])
    position = {row["clip_index"]: i for i, row in enumerate(rows)}
    waiting = [(position[s.row["clip_index"]], s.caption_frames) for s in scored if s.caption_frames is not None]
    return AnalysedVideo(rows, waiting)


def caption_as_they_come(videos: Iterable[tuple[str, AnalysedVideo]], cfg: CurateConfig) -> Iterator[tuple[str, list[dict]]]:
    """(video_id, rows) of each video once all its captions are written: the clips that wait for
    the model are captioned `caption.batch_size` at a time across videos, as batches fill, so
    one model serves every worker and at most a batch (plus one video's clips) of frames waits."""
    held: dict[str, AnalysedVideo] = {}
    left: dict[str, int] = {}
    queue: list[tuple[str, int, np.ndarray]] = []

    def run_batch(batch: list[tuple[str, int, np.ndarray]]) -> Iterator[tuple[str, list[dict]]]:
        # A failing model (out of memory, a bad folder) is no fault of a file: it stops the run.
        fill_captions(cfg, [held[vid].rows[pos] for vid, pos, _ in batch], [frames for _, _, frames in batch])
        for vid, _, _ in batch:
            left[vid] -= 1
            if not left[vid]:
                del left[vid]
                yield vid, held.pop(vid).rows

    for vid, video in videos:
        if not video.waiting:
            yield vid, video.rows
            continue
        held[vid], left[vid] = video, len(video.waiting)
        queue += [(vid, pos, frames) for pos, frames in video.waiting]
        while len(queue) >= cfg.caption.batch_size:
            batch, queue = queue[: cfg.caption.batch_size], queue[cfg.caption.batch_size :]
            yield from run_batch(batch)
    for start in range(0, len(queue), cfg.caption.batch_size):
        yield from run_batch(queue[start : start + cfg.caption.batch_size])
