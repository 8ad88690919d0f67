"""`run.backend = "ray"`: the curation stages (`stages.py`) as one streaming Ray Data pipeline.

    videos (a block each) -> flat_map: probe + split -> map: score
        [-> map_batches: caption, a pool of captioning actors] -> the driver

Probe and split are one stage, so a file is opened once (a remote one copied once). Both stages
are CPU tasks, and Ray fuses them into one task a block, so a video's decoded frames stay in the
worker that decoded them. With a captioning model (`caption.captioner` other than `template`) a
pool of actors captions `caption.batch_size` clips a call: one actor per GPU with `num_gpus=1`
where the cluster has GPUs, else `caption.actors` (default 1) CPU actors, each holding a CPU the
other stages then do without. Every record crossing a stage is one clip (or one rejected video),
pickled into a `payload` column, so rows of any shape share a block.

Ray Data's streaming executor runs the stages at once and stops launching upstream tasks while
the object store's share for this dataset (`run.ray_object_store_mb`, default: Ray Data's
fraction of the store) is full, so a corpus far larger than the store streams through it. The
driver regroups records by video, so the runner writes each finished shard's part file as with
the process backend; dedup and balance then run over the whole manifest (dedup's LSH bands as Ray
tasks too, `dedup.backend`).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from mugv.curate.config import CurateConfig
from mugv.curate.inputs import InputItem
from mugv.curate.stages import Candidate, Scored, fill_captions, internal_error_row, probe_and_split, score


def execute_with_ray(pending: list[tuple[str, InputItem, dict]], cfg: CurateConfig) -> Iterator[tuple[str, list[dict]]]:
    """(video_id, rows) for every (video_id, item, base columns) of `pending`, as videos complete."""
    ray = start_ray(cfg)
    records = [{"video_id": vid, "payload": pickle.dumps((item, base))} for vid, item, base in pending]
    dataset = (
        ray.data.from_items(records, override_num_blocks=len(records))  # a video a block: the unit of work
        .flat_map(_ProbeAndSplitStage(cfg))
        .map(_ScoreStage(cfg))
    )
    if cfg.caption.captioner != "template":
        gpus = int(ray.cluster_resources().get("GPU", 0))
        # Blocks of a batch each; the repartition also keeps Ray from fusing the CPU filters into
        # the captioning actors, of which there are few.
        dataset = dataset.repartition(target_num_rows_per_block=cfg.caption.batch_size).map_batches(
            _CaptionActor,
            fn_constructor_args=(cfg, "cuda" if gpus else "cpu"),
            batch_size=cfg.caption.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=cfg.caption.actors or gpus or 1),
            num_gpus=1 if gpus else 0,
        )
    yield from _by_video(dataset.iter_rows())


def start_ray(cfg: CurateConfig):
    """Ray, joined at `run.ray_address` or started locally (`run.workers` CPUs, 0: all), with
    this run's object store budget for Ray Data."""
    import ray
    import ray.data
    from ray.data import ExecutionResources

    if not ray.is_initialized():
        options = {"address": cfg.run.ray_address} if cfg.run.ray_address else {"num_cpus": cfg.run.workers or None}
        ray.init(**options, include_dashboard=False, log_to_driver=False, configure_logging=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the runner shows one bar, by video
    budget = cfg.run.ray_object_store_mb * 2**20 or None  # None: Ray Data's default
    context.execution_options.resource_limits = ExecutionResources.for_limits(object_store_memory=budget)
    return ray


def _record(vid: str, clips: int, payload: Candidate | Scored) -> dict:
    """One clip of a video that yields `clips` records in all."""
    return {"video_id": vid, "clips": clips, "payload": pickle.dumps(payload, protocol=5)}


class _ProbeAndSplitStage:
    def __init__(self, cfg: CurateConfig):
        self.cfg = cfg

    def __call__(self, record: dict) -> Iterator[dict]:
        """A record per clip: a candidate with its decoded frames, or a finished row."""
        vid = record["video_id"]
        item, base = pickle.loads(record["payload"])
        try:
            finished, candidates = probe_and_split(item, self.cfg, base)
        except Exception as exc:
            yield _record(vid, 1, Scored(internal_error_row(base, exc)))
            return
        clips = len(finished) + len(candidates)
        for row in finished:
            yield _record(vid, clips, Scored(row))
        for candidate in candidates:
            yield _record(vid, clips, candidate)


class _ScoreStage:
    def __init__(self, cfg: CurateConfig):
        self.cfg = cfg

    def __call__(self, record: dict) -> dict:
        clip = pickle.loads(record["payload"])
        if isinstance(clip, Candidate):
            try:
                clip = score(self.cfg, clip)
            except Exception as exc:  # the driver gives the whole video this one row
                clip = Scored(internal_error_row(clip.row, exc))
        return _record(record["video_id"], record["clips"], clip)


class _CaptionActor:
    """Holds one captioning model; captions the waiting clips of each batch in one call."""

    def __init__(self, cfg: CurateConfig, device: str):
        self.cfg = replace(cfg, caption=replace(cfg.caption, device=device))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        clips = [pickle.loads(payload) for payload in batch["payload"]]
        waiting = [clip for clip in clips if clip.caption_frames is not None]
        fill_captions(self.cfg, [clip.row for clip in waiting], [clip.caption_frames for clip in waiting])
        payloads = [pickle.dumps(Scored(clip.row), protocol=5) for clip in clips]
        return {**batch, "payload": np.array(payloads, dtype=object)}


def _by_video(records: Iterator[dict]) -> Iterator[tuple[str, list[dict]]]:
    """Each video's rows in clip order, once all its records are in; a video any of whose stages
    failed gets its `internal_error` row alone, as in the process backend."""
    collected: dict[str, list[dict]] = {}
    for record in records:
        vid = record["video_id"]
        rows = collected.setdefault(vid, [])
        rows.append(pickle.loads(record["payload"]).row)
        if len(rows) == record["clips"]:
            del collected[vid]
            failed = [row for row in rows if row["reason"] == "internal_error"]
            yield vid, failed[:1] or sorted(rows, key=lambda row: row["clip_index"])
