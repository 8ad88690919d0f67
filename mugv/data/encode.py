"""`mugv encode`: kept manifest clips -> VAE latents + text embeddings in shards, with an index.
(Preference manifests, pairs or labelled clips, go through mugv.data.encode_preferences.)

For each kept row of a curation manifest (`mugv/curate/manifest.py`: clip_id, path, start_frame,
end_frame, fps, width, height, status, caption), or each image file listed in it:

1. decode the clip's frames (PyAV, `mugv.video`); a vanished or unreadable file is reported and
   skipped (or stops the run with `strict`);
2. pick its bucket (`mugv.data.buckets`: kind, nearest aspect ratio, longest, largest fitting),
   take the bucket's number of consecutive frames from the middle of the clip, resize to fill and
   centre-crop to the bucket's size;
3. scale pixels to [-1, 1] and encode them with the VAE, normalising the latents once with the
   VAE's per-channel constants (the reference release scales to [0, 1] and normalises twice);
4. encode the caption with `" aesthetic score: 6.0."` appended, keeping the real tokens only;
5. write samples to shards (`mugv.data.shards`); the index is rebuilt at the end.

With `also_images`, each video clip's middle frame is also stored as an image sample (key
`CLIP:image`, same caption), so video-only curation feeds the image:video mixture of stage 1.

Resumable: clips already in a complete shard are skipped. Parallel: worker w of W takes rows
w, w + W, ...; each worker writes its own shards (`wNN-SEQ`).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mugv.config import VAEPrecision
from mugv.data.buckets import Bucket, assign_bucket, default_buckets
from mugv.data.shards import INDEX_NAME, REPORT_NAME, ShardWriter, list_sidecars, split_url, write_index
from mugv.errors import MugvError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


class EncodeError(MugvError, RuntimeError):
    pass


@dataclass
class EncodeOptions:
    manifest: str
    out: str
    buckets: list[Bucket] = field(default_factory=default_buckets)
    text_encoder: str = "minilm"
    text_encoder_path: str = ""
    text_max_tokens: int = 0
    text_dtype: str = "fp32"
    aesthetic: float | None = 6.0
    vae_preset: str = "tiny"
    vae_weights: str = ""
    random_vae: bool = False  # allow random VAE weights (tests and demos only)
    sample_posterior: bool = False  # the release samples; the default is the posterior mode
    also_images: bool = False  # also store each video clip's middle frame as an image sample
    vae_tile: int = 0
    vae_precision: VAEPrecision = "auto"  # what the VAE computes in (mugv/models/vae/precision.py)
    shard_size: int = 64
    latent_dtype: str = "bf16"
    workers: int = 1
    device: str = "cpu"
    strict: bool = False
    progress: bool = True
    limit: int = 0  # encode at most this many rows (0: all)
    seed: int = 0
    aspect: str = "overall"  # preference manifests: the judged aspect whose rows are encoded


@dataclass
class EncodeSummary:
    encoded: int = 0
    already_done: int = 0
    skipped: Counter = field(default_factory=Counter)
    shards: list[str] = field(default_factory=list)
    samples_in_index: int = 0

    def merge(self, other: "EncodeSummary") -> None:
        self.encoded += other.encoded
        self.already_done += other.already_done
        self.skipped.update(other.skipped)
        self.shards += other.shards

    def format(self) -> str:
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (f"encoded {self.encoded} clip(s) into {len(self.shards)} new shard(s); {self.already_done} already "
                f"encoded; skipped: {skipped}; index holds {self.samples_in_index} sample(s)")


# --------------------------------------------------------------------------------------------
# Encoders behind small interfaces
# --------------------------------------------------------------------------------------------


class VAELatentEncoder:
    """The MUG-V VAE: `encode` returns `(z - mean) / std` once, in float32 whatever the compute
    precision; the mode unless sampling."""

    def __init__(self, opts: EncodeOptions, cfg: Any = None):
        from mugv.models.vae import MUGVideoVAE, VAEConfig
        from mugv.models.vae.adapters import load_into, read_state_dict
        from mugv.utils.device import resolve_device

        if not opts.vae_weights and not opts.random_vae:
            raise EncodeError("no VAE weights: pass --vae-weights (random weights only with --random-vae, for tests)")
        cfg = cfg or VAEConfig.from_preset(opts.vae_preset)
        if opts.vae_tile:
            cfg.tile_size = opts.vae_tile
        self.vae = MUGVideoVAE(cfg)
        if opts.vae_weights:
            load_into(self.vae, read_state_dict(opts.vae_weights))
        self.device = resolve_device(opts.device)
        self.vae.to(self.device).eval()
        self.latent_channels = cfg.latent_channels
        self.sample = opts.sample_posterior
        self.precision = opts.vae_precision
        self.generator = torch.Generator(device=self.device).manual_seed(opts.seed)

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        from mugv.models.vae.precision import vae_precision

        with vae_precision(self.precision, self.device):
            latents = self.vae.encode(pixels.to(self.device), sample=self.sample, generator=self.generator)
        return latents.float().cpu()


# --------------------------------------------------------------------------------------------
# Manifest rows and clips
# --------------------------------------------------------------------------------------------


def read_manifest(path: str) -> tuple[list[dict[str, Any]], int]:
    """The kept clip rows of a curation manifest (sorted by clip_id) and the count of others."""
    import pyarrow.parquet as pq

    fs, p = split_url(path)
    with fs.open(p, "rb") as f:
        rows = pq.read_table(f).to_pylist()
    needed = {"clip_id", "path", "status"}
    if rows and not needed <= set(rows[0]):
        raise EncodeError(f"{path} is not a clip manifest: it lacks {sorted(needed - set(rows[0]))}")
    kept = [r for r in rows if r.get("status") == "kept" and (r.get("clip_index") is None or r["clip_index"] >= 0)]
    kept.sort(key=lambda r: r["clip_id"])
    return kept, len(rows) - len(kept)


def load_frames(row: dict[str, Any], short_side: int = 0) -> tuple[np.ndarray, float]:
    """uint8 (T, H, W, 3) frames of a manifest row and their fps, decoded with the shorter side
    at most `short_side` (0: native); raises FileNotFoundError for a vanished file and
    ValueError for an unusable one."""
    from mugv.video import VideoError, VideoReader

    path = str(row["path"])
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        import cv2

        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"unreadable image {path}")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)[None], float(row.get("fps") or 0.0)
    start = int(row.get("start_frame") or 0)
    end = row.get("end_frame")
    try:
        with VideoReader(path) as reader:
            video = reader.decode(short_side=short_side, max_frames=int(end) if end else 0)
    except VideoError as exc:
        raise ValueError(f"{exc.reason}: {exc.message}") from exc
    frames = video.frames[start : int(end) if end else None]
    if len(frames) == 0:
        raise ValueError(f"no frames in [{start}, {end}) of {path}")
    fps = float(row.get("fps") or video.measured_fps or 0.0)
    return frames, fps


def fit_to_bucket(frames: np.ndarray, bucket: Bucket) -> np.ndarray:
    """The bucket's frame count from the middle of the clip, resized to fill and centre-cropped."""
    from mugv.video import resize_to_fill

    start = (len(frames) - bucket.frames) // 2
    return resize_to_fill(frames[start : start + bucket.frames], bucket.width, bucket.height)


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (1, 3, T, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float()
    return (x / 127.5 - 1.0)[None]


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------


def _next_seq(out: str, prefix: str) -> int:
    fs, p = split_url(out)
    seqs = [int(m.group(1)) for name in (fs.glob(f"{p}/{prefix}-*.json") if fs.exists(p) else [])
            if (m := re.search(rf"{prefix}-(\d+)\.json$", name))]
    return max(seqs) + 1 if seqs else 0


def worker_share(opts: EncodeOptions, rows: list[dict[str, Any]], key: str, worker: int, workers: int,
                 summary: EncodeSummary, progress_queue: Any = None) -> list[dict[str, Any]]:
    """The rows worker `worker` of `workers` still has to encode (rows w, w + W, ...; those whose
    `key` is in a complete shard are counted as done)."""
    if opts.limit:
        rows = rows[: opts.limit]
    done = {r[key] for sidecar in list_sidecars(opts.out) for r in sidecar["samples"]}
    mine = [r for i, r in enumerate(rows) if i % workers == worker]
    todo = [r for r in mine if r[key] not in done]
    summary.already_done = len(mine) - len(todo)
    if progress_queue is not None and summary.already_done:
        progress_queue.put(summary.already_done)
    return todo


def worker_tools(opts: EncodeOptions, prefix: str) -> tuple[VAELatentEncoder, Any, ShardWriter]:
    """The VAE, the text encoder and a shard writer for the worker's shards `{prefix}-SEQ`."""
    from mugv.models.text import build_text_encoder

    text_encoder = build_text_encoder(opts.text_encoder, opts.text_encoder_path, opts.text_max_tokens,
                                      opts.text_dtype, opts.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[opts.latent_dtype]
    writer = ShardWriter(opts.out, prefix=prefix, shard_size=opts.shard_size, start_seq=_next_seq(opts.out, prefix),
                         dtype=dtype)
    return VAELatentEncoder(opts), text_encoder, writer


class SkipLog:
    """Rows that are not encoded: a warning each (or an error with `strict`), counted in the summary
    and written to the worker's part of the report."""

    def __init__(self, opts: EncodeOptions, summary: EncodeSummary, prefix: str):
        self.strict, self.summary, self.prefix, self.out = opts.strict, summary, prefix, opts.out
        self.lines: list[str] = []

    def skip(self, what: str, ids: dict[str, str], path: str, reason: str, detail: str) -> None:
        message = f"skipping {what} {next(iter(ids.values()))} ({path}): {reason}: {detail}"
        if self.strict:
            raise EncodeError(message + " (--strict)")
        warnings.warn(message, stacklevel=3)
        self.summary.skipped[reason] += 1
        self.lines.append(json.dumps({**ids, "path": path, "reason": reason, "detail": detail}))

    def write(self) -> None:
        if self.lines:
            fs, out = split_url(self.out)
            with fs.open(f"{out}/{REPORT_NAME[:-6]}-{self.prefix}-{os.getpid()}.jsonl", "w") as f:
                f.write("\n".join(self.lines) + "\n")


def encode_worker(opts: EncodeOptions, worker: int, workers: int, progress_queue: Any = None) -> EncodeSummary:
    from mugv.data.encode_preferences import encode_preference_worker, is_preference_manifest
    from mugv.models.text import with_aesthetic

    if is_preference_manifest(opts.manifest):
        return encode_preference_worker(opts, worker, workers, progress_queue)
    summary = EncodeSummary()
    todo = worker_share(opts, read_manifest(opts.manifest)[0], "clip_id", worker, workers, summary, progress_queue)
    if not todo:
        return summary
    prefix = f"w{worker:02d}"
    vae, text_encoder, writer = worker_tools(opts, prefix)
    log = SkipLog(opts, summary, prefix)

    def skip(row: dict[str, Any], reason: str, detail: str) -> None:
        log.skip("clip", {"clip_id": row["clip_id"]}, row["path"], reason, detail)

    try:
        for row in todo:
            try:
                caption = (row.get("caption") or row.get("input_caption") or "").strip()
                if not caption:
                    skip(row, "no_caption", "the manifest row has no caption")
                    continue
                # Decode no larger than the bucket the manifest's size points to needs.
                planned = None
                if row.get("width") and row.get("height") and row.get("end_frame"):
                    count = int(row["end_frame"]) - int(row.get("start_frame") or 0)
                    planned = assign_bucket(opts.buckets, count, int(row["height"]), int(row["width"]))
                short_side = max(planned.height, planned.width) if planned is not None else 0
                try:
                    frames, fps = load_frames(row, short_side)
                except FileNotFoundError:
                    skip(row, "missing_file", "the source file has vanished")
                    continue
                except ValueError as exc:
                    skip(row, "unreadable", str(exc))
                    continue
                n, h, w = frames.shape[:3]
                bucket = assign_bucket(opts.buckets, n, h, w)
                if planned is not None and bucket is not None and bucket.frames == planned.frames:
                    bucket = planned  # the decoded frames are smaller than the source; keep its bucket
                if bucket is None:
                    skip(row, "no_bucket", f"{n} frames of {w}x{h}: no bucket of its kind is short enough")
                    continue
                latents = vae.encode(to_pixels(fit_to_bucket(frames, bucket)))[0]
                if tuple(latents.shape[1:]) != bucket.latent_shape:
                    raise EncodeError(f"VAE returned latents {tuple(latents.shape)} for bucket {bucket.name}, "
                                      f"expected {bucket.latent_shape}")
                text = text_encoder.encode([with_aesthetic(caption, opts.aesthetic)]).trimmed()[0]
                record = {
                    "key": str(row["clip_id"]),
                    "clip_id": str(row["clip_id"]),
                    "source": str(row["path"]),
                    "kind": bucket.kind,
                    "bucket": bucket.name,
                    "frames": bucket.frames,
                    "height": bucket.height,
                    "width": bucket.width,
                    "fps": fps if fps > 0 else 24.0,
                    "caption": caption,
                }
                writer.add(record, latents, text)
                summary.encoded += 1
                image_bucket = assign_bucket(opts.buckets, 1, h, w) if opts.also_images and n > 1 else None
                if image_bucket is not None:  # the clip's middle frame as an image sample
                    still = vae.encode(to_pixels(fit_to_bucket(frames[n // 2 : n // 2 + 1], image_bucket)))[0]
                    writer.add({**record, "key": f"{row['clip_id']}:image", "kind": "image",
                                "bucket": image_bucket.name, "frames": 1, "height": image_bucket.height,
                                "width": image_bucket.width}, still, text)
            finally:
                if progress_queue is not None:
                    progress_queue.put(1)
        writer.close()
    finally:
        summary.shards = list(writer.written)
        log.write()
    return summary


def _worker_entry(opts: EncodeOptions, worker: int, workers: int, progress_queue: Any, results: Any) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    try:
        results.put((worker, encode_worker(opts, worker, workers, progress_queue), None))
    except BaseException as exc:  # reported by the parent
        results.put((worker, None, f"{type(exc).__name__}: {exc}"))


def check_options(opts: EncodeOptions) -> None:
    """The options' names and files, checked before any clip or model is loaded."""
    from mugv.models.text.encoders import text_encoder_folder
    from mugv.models.vae import VAEConfig
    from mugv.models.vae.precision import resolve_vae_precision
    from mugv.utils.device import resolve_device

    VAEConfig.from_preset(opts.vae_preset)
    if opts.vae_weights and not Path(opts.vae_weights).is_file():
        raise EncodeError(f"VAE weights not found: {opts.vae_weights}")
    text_encoder_folder(opts.text_encoder, opts.text_encoder_path)
    resolve_vae_precision(opts.vae_precision, resolve_device(opts.device))


def run_encode(opts: EncodeOptions) -> EncodeSummary:
    """Encode every kept row of `opts.manifest` into shards under `opts.out`; returns a summary."""
    from mugv.data.encode_preferences import is_preference_manifest, read_preference_manifest
    from mugv.utils.progress import progress_bar

    check_options(opts)
    if is_preference_manifest(opts.manifest):  # docs/preference.md: pairs or labelled samples
        rows, others = read_preference_manifest(opts.manifest, opts.aspect)[1], 0
    else:
        rows, others = read_manifest(opts.manifest)
    if not rows:
        raise EncodeError(f"{opts.manifest} has no kept clips: none of its {others} rows has status 'kept' "
                          "(its `reason` column says why each was rejected); nothing to encode")
    total = min(len(rows), opts.limit) if opts.limit else len(rows)
    summary = EncodeSummary()
    fs, out = split_url(opts.out)
    if fs.exists(f"{out}/{INDEX_NAME}"):  # rebuilt at the end; until then readers use the sidecars
        fs.rm(f"{out}/{INDEX_NAME}")
    bar = progress_bar(total, desc="encode", unit="clip", enabled=opts.progress)
    if opts.workers <= 1:
        class _Bar:
            def put(self, n: int) -> None:
                bar.update(n)

        summary.merge(encode_worker(opts, 0, 1, _Bar()))
    else:
        ctx = mp.get_context("spawn")
        progress, results = ctx.Queue(), ctx.Queue()
        procs = [ctx.Process(target=_worker_entry, args=(opts, w, opts.workers, progress, results))
                 for w in range(opts.workers)]
        for p in procs:
            p.start()
        errors, finished = [], 0
        while finished < len(procs):
            while not progress.empty():
                bar.update(progress.get())
            try:
                worker, result, error = results.get(timeout=0.2)
            except Exception:
                if not any(p.is_alive() for p in procs) and results.empty():
                    errors.append("a worker process died")
                    break
                continue
            finished += 1
            if error:
                errors.append(f"worker {worker}: {error}")
            else:
                summary.merge(result)
        for p in procs:
            p.join()
        while not progress.empty():
            bar.update(progress.get())
        if errors:
            bar.close()
            raise EncodeError("; ".join(errors))
    bar.close()
    _merge_reports(opts.out)
    summary.samples_in_index = write_index(opts.out)
    return summary


def _merge_reports(out: str) -> None:
    """Gather the workers' skip reports into one `encode_report.jsonl` (latest run's view)."""
    fs, p = split_url(out)
    parts = sorted(fs.glob(f"{p}/{REPORT_NAME[:-6]}-*.jsonl"))
    if not parts:
        return
    lines = []
    for part in parts:
        with fs.open(part, "r") as f:
            lines += [line for line in f.read().splitlines() if line.strip()]
        fs.rm(part)
    with fs.open(f"{p}/{REPORT_NAME}", "w") as f:
        f.write("\n".join(lines) + "\n")
