"""The curation runner: per-video stages in parallel workers (`stages.py`), a captioning model
batching clips across videos in this process, then manifest-wide dedup and balance; or the same
stages as a Ray Data pipeline (`ray_pipeline.py`, `run.backend = "ray"`).

Each video is opened once and decoded once; the decoded frames (and their thumbnails) are shared
by the scene split, every filter and the captioner. The inputs are grouped into shards (about
`run.shard_size` videos); a finished shard's rows are written atomically to
`DIR/parts/<settings>/shard-<members' keys>.parquet`, so a rerun with the same per-video settings,
after a kill or not, skips it (resume), while changed settings start a fresh parts folder. Dedup
and balance run on all the parts' rows in input order, so the manifest does not depend on which
run wrote which part.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mugv.config import to_toml
from mugv.curate import balance, dedup, storage
from mugv.curate.config import CurateConfig
from mugv.curate.inputs import InputItem, read_inputs
from mugv.curate.manifest import KEPT, REJECTED, read_rows, summary_table, write_rows
from mugv.curate.stages import AnalysedVideo, analyse_video, caption_as_they_come, video_base, video_row

MANIFEST_NAME = "manifest.parquet"
SUMMARY_NAME = "summary.txt"
_FINGERPRINT_THREADS = 16
_ORPHAN_CHECK_SECONDS = 0.5
# Fresh interpreters: forking a parent that has run codec or OpenCV threads can deadlock.
_SPAWN = multiprocessing.get_context("spawn")


@dataclass
class CurateResult:
    rows: list[dict]
    manifest: Path
    summary: str
    files_processed: int  # input files curated in this run; the rest were resumed from earlier parts
    seconds: float


def video_id(item: InputItem, storage_options: dict[str, dict] | None = None) -> str:
    """Stable id of an input file's content, the same wherever the input lives and whenever the file
    was written: its name within the input (`InputItem.name`), its size and a digest of its first
    and last 64 KiB. Clip ids, and so the order of samples in encoding and training, follow from it."""
    return _video_id(item, storage.fingerprint(item.path, storage_options or {}))


def _video_id(item: InputItem, found: storage.Fingerprint | None) -> str:
    name = item.name or (item.path if storage.is_remote(item.path) else os.path.abspath(item.path))
    key = f"{name}|{found.size}|{found.ends}" if found else name
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def per_video_settings(cfg: CurateConfig) -> str:
    """Hash of the settings that shape per-video rows (not execution, caption batching, dedup or balance)."""
    batching = replace(cfg.caption, batch_size=type(cfg.caption)().batch_size, actors=type(cfg.caption)().actors)
    relevant = replace(cfg, run=type(cfg.run)(), caption=batching, dedup=type(cfg.dedup)(), balance=type(cfg.balance)())
    return hashlib.sha1(to_toml(relevant).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# One video
# --------------------------------------------------------------------------------------------


def curate_video(item: InputItem, cfg: CurateConfig) -> list[dict]:
    """All candidate-clip rows of one video, captions included; any failure becomes a rejected
    row, never an error."""
    return next(caption_as_they_come([("", _analyse(item, cfg))], cfg))[1]


def _analyse(item: InputItem, cfg: CurateConfig) -> AnalysedVideo:
    """A worker's part of a video: everything but the captioning model."""
    return analyse_video(item, cfg, video_base(item, item.id or video_id(item, cfg.run.storage_options)))


# --------------------------------------------------------------------------------------------
# The whole manifest
# --------------------------------------------------------------------------------------------


def apply_dedup(rows: list[dict], cfg: CurateConfig) -> None:
    """Reject all but the best-quality clip of each near-duplicate cluster (in place)."""
    kept = [r for r in rows if r["status"] == KEPT]
    if not cfg.dedup.enabled or len(kept) < 2:
        return
    hashes = np.array([r["phash"] for r in kept], dtype=np.uint64)
    embeddings = None
    described = [i for i, r in enumerate(kept) if r["caption_source"] not in ("template", None)]
    if cfg.dedup.caption_similarity > 0 and len(described) >= 2:
        vectors = dedup.caption_embeddings([kept[i]["caption"] for i in described])
        embeddings = np.zeros((len(kept), vectors.shape[1]), np.float32)
        embeddings[described] = vectors
    settings = cfg.dedup
    if settings.backend == "auto":
        settings = replace(settings, backend="ray" if cfg.run.backend == "ray" else "local")
    clusters = dedup.cluster(len(kept), dedup.similar_pairs(settings, hashes, embeddings))
    members: dict[int, list[int]] = {}
    for index, root in enumerate(clusters):
        members.setdefault(root, []).append(index)
    for group in members.values():
        if len(group) < 2:
            continue
        best = max(group, key=lambda i: (kept[i]["quality"], -i))
        for i in group:
            kept[i]["dup_cluster"] = kept[best]["clip_id"]
            if i != best:
                kept[i]["status"], kept[i]["reason"] = REJECTED, "duplicate"


def apply_balance(rows: list[dict], cfg: CurateConfig) -> None:
    """Tag every captioned clip with entities and a category; sample kept clips to the mix."""
    for row in rows:
        if row["caption"]:
            row["entities"], row["category"] = balance.extract_entities(row["caption"])
    kept = [r for r in rows if r["status"] == KEPT]
    if not cfg.balance.mix or not kept:
        return
    chosen = balance.stratified_sample([r["category"] for r in kept], np.array([r["quality"] for r in kept]), cfg.balance)
    for row, keep in zip(kept, chosen):
        if not keep:
            row["status"], row["reason"] = REJECTED, "balance"


@dataclass
class Shard:
    """A group of input videos whose rows are written together, as one part file."""

    name: str  # a digest of what shapes its members' rows
    videos: list[InputItem]  # in input order, ids set


def run_curation(input_spec: str | Path, out_dir: str | Path, cfg: CurateConfig) -> CurateResult:
    started = time.perf_counter()
    out = Path(out_dir)
    parts = out / "parts" / per_video_settings(cfg)
    parts.mkdir(parents=True, exist_ok=True)
    for interrupted in parts.glob("*.partial"):  # a part being written when an earlier run was killed
        interrupted.unlink()
    (out / "curate.toml").write_text(to_toml(cfg))
    # Every input file gets rows, except what this run writes when --out lies inside the input.
    inputs = [
        i for i in read_inputs(input_spec, cfg.run.storage_options) if not Path(i.path).is_relative_to(os.path.abspath(out))
    ]
    shards = plan_shards(identify(inputs, cfg.run.storage_options), cfg.run.shard_size)
    pending = [s for s in shards if not (cfg.run.resume and (parts / s.name).is_file())]
    total, todo = sum(len(s.videos) for s in shards), sum(len(s.videos) for s in pending)

    progress = _progress(total, total - todo, cfg.run.progress)
    shard_of = {item.id: shard for shard in pending for item in shard.videos}
    waiting = {shard.name: len(shard.videos) for shard in pending}
    finished: dict[str, list[dict]] = {}  # rows of the videos of shards not yet complete
    clips = 0
    for vid, rows in _execute([(item.id, item) for shard in pending for item in shard.videos], cfg):
        finished[vid] = rows
        shard = shard_of[vid]
        waiting[shard.name] -= 1
        if not waiting[shard.name]:
            write_rows([row for item in shard.videos for row in finished.pop(item.id)], parts / shard.name)
        clips += sum(1 for r in rows if r["clip_index"] >= 0)
        if progress is not None:
            progress.set_postfix_str(f"{clips / max(1e-9, time.perf_counter() - started):.1f} clips/s", refresh=False)
            progress.update(1)
    if progress is not None:
        progress.close()

    # The manifest-wide steps see the rows in input order, whichever run wrote which part.
    rows = [row for shard in shards for row in read_rows(parts / shard.name)]
    apply_dedup(rows, cfg)
    apply_balance(rows, cfg)
    manifest = out / MANIFEST_NAME
    write_rows(rows, manifest)
    summary = summary_table(rows)
    (out / SUMMARY_NAME).write_text(summary + "\n")
    return CurateResult(rows, manifest, summary, todo, time.perf_counter() - started)


def identify(inputs: list[InputItem], storage_options: dict[str, dict]) -> list[tuple[InputItem, str]]:
    """Each distinct input (by id, at its first place) with its id set, and the key of its rows:
    the id plus what else shapes them, the input table's columns (an edited caption or licence) and
    the file's version (a file rewritten with the same size and ends keeps its id but is curated again)."""
    with ThreadPoolExecutor(_FINGERPRINT_THREADS) as pool:  # remote inputs: round trips, not work
        found = list(pool.map(lambda item: storage.fingerprint(item.path, storage_options), inputs))
    unique: dict[str, tuple[InputItem, str]] = {}
    for item, fingerprint in zip(inputs, found):
        vid = _video_id(item, fingerprint)
        version = fingerprint.version if fingerprint else ""
        key = f"{vid}\0{item.caption}\0{item.source}\0{item.license}\0{version}"
        unique[vid] = (replace(item, id=vid), hashlib.sha1(key.encode()).hexdigest())
    return list(unique.values())


def plan_shards(videos: list[tuple[InputItem, str]], size: int) -> list[Shard]:
    """Groups of consecutive videos, `size` on average, cut after each video whose id is 0 modulo
    `size` (content-defined, as rsync cuts chunks): an added or removed input changes only the
    shard it falls in, never the cuts elsewhere. A part is named by its members' keys, so it is
    reused only while none of them changed."""
    shards, group = [], []
    for index, (item, key) in enumerate(videos):
        group.append((item, key))
        if int(item.id, 16) % size == 0 or index == len(videos) - 1:
            digest = hashlib.sha1("\n".join(k for _, k in group).encode()).hexdigest()[:20]
            shards.append(Shard(f"shard-{digest}.parquet", [i for i, _ in group]))
            group = []
    return shards


def _progress(total: int, done: int, enabled: bool):
    if not enabled:
        return None
    from mugv.utils.progress import progress_bar

    return progress_bar(total, initial=done, unit="video", desc="curate")


def _execute(pending: list[tuple[str, InputItem]], cfg: CurateConfig) -> Iterator[tuple[str, list[dict]]]:
    """(video_id, rows) for every pending video, in completion order."""
    if not pending:
        return
    if cfg.run.backend == "ray":
        from mugv.curate.ray_pipeline import execute_with_ray

        yield from execute_with_ray([(vid, item, video_base(item, vid)) for vid, item in pending], cfg)
        return
    yield from caption_as_they_come(_analyse_in_workers(pending, cfg), cfg)


def _analyse_in_workers(pending: list[tuple[str, InputItem]], cfg: CurateConfig) -> Iterator[tuple[str, AnalysedVideo]]:
    """(video_id, its analysis) for every pending video, in completion order."""
    workers = min(len(pending), cfg.run.workers or os.cpu_count() or 1)
    if workers == 1:
        for vid, item in pending:
            yield vid, _analyse(item, cfg)
        return
    queue = iter(pending)
    items = dict(pending)
    while True:
        crashed = yield from _pool_pass(queue, workers, cfg)
        if not crashed:
            return
        # A worker died (a codec crash, the OOM killer) and took the pool with it. Rerun the
        # videos that were in flight one by one, so the culprit is found and recorded.
        for vid in crashed:
            yield vid, _run_alone(vid, items[vid], cfg)


def _pool_pass(queue: Iterator[tuple[str, InputItem]], workers: int, cfg: CurateConfig):
    """Run videos from `queue` in a pool until it is empty (returns []) or the pool breaks
    (returns the ids of the videos in flight)."""
    with ProcessPoolExecutor(max_workers=workers, mp_context=_SPAWN, initializer=_init_worker) as pool:
        running = {}

        def submit_next() -> None:
            for vid, item in queue:
                running[pool.submit(_analyse, item, cfg)] = vid
                return

        for _ in range(2 * workers):  # a bounded number in flight: decoded frames are large
            submit_next()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    rows = future.result()
                except BrokenProcessPool:
                    return list(running.values())
                yield running.pop(future), rows
                submit_next()
    return []


def _run_alone(vid: str, item: InputItem, cfg: CurateConfig) -> AnalysedVideo:
    with ProcessPoolExecutor(max_workers=1, mp_context=_SPAWN, initializer=_init_worker) as pool:
        try:
            return pool.submit(_analyse, item, cfg).result()
        except BrokenProcessPool:
            row = video_row(video_base(item, vid), "worker_crashed", "the worker process died while curating this video")
            return AnalysedVideo([row])


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # parallelism comes from the processes
    # A runner killed with SIGKILL cannot stop its pool: each worker leaves once its parent is gone,
    # rather than finishing its video for nobody and waiting forever on the pool's queue.
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_ORPHAN_CHECK_SECONDS)
    os._exit(1)
