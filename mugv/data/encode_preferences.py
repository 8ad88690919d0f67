"""`mugv encode` of preference manifests: the files the annotation app exports (docs/annotate.md,
"Preference data format"), JSON Lines or Parquet with TRL's column names:

- pairs: `prompt`, `chosen`, `rejected` (optional `image`): both clips are fitted to the chosen
  clip's bucket and stored in ONE sample (the chosen latents, plus `{slot}.rejected`), so the
  pair stays together through buckets, balanced sampling, data-parallel splitting and resume;
- unpaired: `prompt`, `completion`, `label` (true = desirable): one sample with its label.

Paths are relative to the manifest's folder. Each sample gets a noise seed (from its key), so that
its training draw is reproducible (docs/preference.md). Extra columns are metadata and ignored.
Row n gets the key `pref-n`; a rerun skips keys already in complete shards.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

from mugv.data.buckets import assign_bucket
from mugv.data.shards import split_url

PAIR_COLUMNS = ("prompt", "chosen", "rejected")
UNPAIRED_COLUMNS = ("prompt", "completion", "label")


def is_preference_manifest(path: str) -> bool:
    """JSON Lines files are preference manifests; a Parquet file is one when it has a `prompt` column."""
    if path.endswith((".jsonl", ".json")):
        return True
    import pyarrow.parquet as pq

    fs, p = split_url(path)
    with fs.open(p, "rb") as f:
        return "prompt" in pq.read_schema(f).names


def read_preference_manifest(path: str, aspect: str = "overall") -> tuple[str, list[dict[str, Any]]]:
    """("pair" | "unpaired", rows with their paths made absolute and a `key`). Rows that carry an
    `aspect` (the annotation export writes one pair per judged aspect) are kept for `aspect` only, so
    that a pair judged on several aspects is not trained on several times; rows without one are kept."""
    from mugv.data.encode import EncodeError

    fs, p = split_url(path)
    if path.endswith((".jsonl", ".json")):
        rows = []
        with fs.open(p, "r") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise EncodeError(f"{path}, line {number}: not JSON ({exc.msg})") from None
    else:
        import pyarrow.parquet as pq

        with fs.open(p, "rb") as f:
            rows = pq.read_table(f).to_pylist()
    if not rows:
        raise EncodeError(f"{path} holds no preference rows")
    judged = sorted({str(row["aspect"]) for row in rows if row.get("aspect") is not None})
    if judged:
        if aspect not in judged:
            raise EncodeError(f"{path} has no rows for aspect {aspect!r} (--aspect); its aspects: {', '.join(judged)}")
        rows = [row for row in rows if row.get("aspect") in (None, aspect)]
    columns = set(rows[0])
    if set(PAIR_COLUMNS) <= columns:
        kind, clips = "pair", ("chosen", "rejected")
    elif set(UNPAIRED_COLUMNS) <= columns:
        kind, clips = "unpaired", ("completion",)
    else:
        raise EncodeError(f"{path} is not a preference manifest: it needs the columns {', '.join(PAIR_COLUMNS)} "
                          f"(pairs) or {', '.join(UNPAIRED_COLUMNS)} (unpaired), has {', '.join(sorted(columns))}")
    folder = Path(p).parent
    for number, row in enumerate(rows):
        missing = [c for c in (PAIR_COLUMNS if kind == "pair" else UNPAIRED_COLUMNS) if row.get(c) is None]
        if missing:
            raise EncodeError(f"{path}, row {number + 1}: no {', '.join(missing)}")
        if kind == "unpaired" and not isinstance(row["label"], bool):
            raise EncodeError(f"{path}, row {number + 1}: label = {row['label']!r} must be true or false")
        for column in clips:
            row[column] = str(folder / row[column]) if not os.path.isabs(row[column]) else row[column]
        row["key"] = f"pref-{number:08d}"
    return kind, rows


def noise_seed(key: str) -> int:
    return zlib.crc32(key.encode())


def encode_preference_worker(opts, worker: int, workers: int, progress_queue: Any = None):
    """Encode this worker's share (rows worker, worker + workers, ...) of a preference manifest."""
    from mugv.data.encode import (EncodeSummary, SkipLog, fit_to_bucket, load_frames, to_pixels, worker_share,
                                  worker_tools)
    from mugv.models.text import with_aesthetic

    summary = EncodeSummary()
    kind, rows = read_preference_manifest(opts.manifest, opts.aspect)
    todo = worker_share(opts, rows, "key", worker, workers, summary, progress_queue)
    if not todo:
        return summary
    prefix = f"p{worker:02d}"
    vae, text_encoder, writer = worker_tools(opts, prefix)
    log = SkipLog(opts, summary, prefix)
    clip_columns = ("chosen", "rejected") if kind == "pair" else ("completion",)

    def skip(row: dict[str, Any], reason: str, detail: str) -> None:
        log.skip("preference row", {"key": row["key"]}, row[clip_columns[0]], reason, detail)

    def encode_row(row: dict[str, Any]) -> None:
        prompt = str(row["prompt"]).strip()
        if not prompt:
            return skip(row, "no_caption", "the row's prompt is empty")
        try:
            decoded = [load_frames({"path": row[c]}) for c in clip_columns]
        except FileNotFoundError as exc:
            return skip(row, "missing_file", f"{exc} has vanished")
        except ValueError as exc:
            return skip(row, "unreadable", str(exc))
        frames = min(len(f) for f, _ in decoded)  # both clips of a pair must fill the bucket
        h, w = decoded[0][0].shape[1:3]
        bucket = assign_bucket(opts.buckets, frames, h, w)
        if bucket is None:
            return skip(row, "no_bucket", f"{frames} frames of {w}x{h}: no bucket of its kind is short enough")
        latents = [vae.encode(to_pixels(fit_to_bucket(f, bucket)))[0] for f, _ in decoded]
        text = text_encoder.encode([with_aesthetic(prompt, opts.aesthetic)]).trimmed()[0]
        fps = decoded[0][1]
        record = {
            "key": row["key"], "clip_id": row["key"], "source": row[clip_columns[0]], "kind": bucket.kind,
            "bucket": bucket.name, "frames": bucket.frames, "height": bucket.height, "width": bucket.width,
            "fps": fps if fps > 0 else 24.0, "caption": prompt, "preference": kind,
            "noise_seed": noise_seed(row["key"]),
        }
        if kind == "unpaired":
            record["label"] = row["label"]
        writer.add(record, latents[0], text, rejected=latents[1] if kind == "pair" else None)
        summary.encoded += 1

    try:
        for row in todo:
            encode_row(row)
            if progress_queue is not None:
                progress_queue.put(1)
        writer.close()
    finally:
        summary.shards = list(writer.written)
        log.write()
    return summary
