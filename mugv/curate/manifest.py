"""The clip manifest: `DIR/manifest.parquet`, one row per candidate clip (or one row per input
file that yielded no candidate, with `clip_index = -1`: a broken video, or a file that is not a
video), every score, `status` and all reasons. `path` is absolute, so readers need no folder."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

KEPT, REJECTED = "kept", "rejected"

MANIFEST_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),  # "<video_id>-<clip_index>"
        ("video_id", pa.string()),  # hash of the file's name within the input, size and ends (runner.video_id)
        ("path", pa.string()),  # absolute
        ("source", pa.string()),  # carried from the input table
        ("license", pa.string()),  # carried from the input table
        ("input_caption", pa.string()),  # carried from the input table
        ("clip_index", pa.int32()),  # -1: the video yielded no candidate clip
        ("start_frame", pa.int64()),
        ("end_frame", pa.int64()),  # exclusive
        ("start_time", pa.float64()),  # seconds
        ("end_time", pa.float64()),
        ("duration", pa.float64()),
        ("fps", pa.float64()),  # measured from the decoded timestamps
        ("width", pa.int32()),  # displayed size (rotation applied)
        ("height", pa.int32()),
        ("rotation", pa.int32()),
        ("codec", pa.string()),
        ("container", pa.string()),
        ("video_frames", pa.int64()),
        ("video_duration", pa.float64()),
        ("vfr", pa.bool_()),
        ("has_audio", pa.bool_()),
        ("error", pa.string()),  # why decoding stopped early, or why the video failed
        ("boundary_before", pa.string()),  # start | cut | gradual | split
        ("boundary_after", pa.string()),  # end | cut | gradual | split
        ("sharpness", pa.float64()),
        ("motion", pa.float64()),
        ("aesthetic", pa.float64()),
        ("aesthetic_scorer", pa.string()),
        ("border_fraction", pa.float64()),
        ("text_fraction", pa.float64()),
        ("frozen_fraction", pa.float64()),
        ("speed_ratio", pa.float64()),
        ("shake", pa.float64()),
        ("quality", pa.float64()),  # ranking score for dedup and balance
        ("phash", pa.list_(pa.uint64())),
        ("caption", pa.string()),
        ("caption_source", pa.string()),  # input | sidecar | template | qwen2vl
        ("entities", pa.list_(pa.string())),
        ("category", pa.string()),
        ("dup_cluster", pa.string()),  # clip_id of the clip kept for this cluster
        ("status", pa.string()),  # kept | rejected
        ("reason", pa.string()),  # every rejection reason, ";"-separated, "" when kept
    ]
)
COLUMNS = MANIFEST_SCHEMA.names


def complete(row: dict) -> dict:
    """The row with every manifest column present (missing ones null)."""
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise KeyError(f"not manifest columns: {sorted(unknown)}")
    return {name: row.get(name) for name in COLUMNS}


def to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([complete(r) for r in rows], schema=MANIFEST_SCHEMA)


def write_rows(rows: list[dict], path: str | Path) -> None:
    """Write atomically and durably: a crash or a power cut never leaves a half-written file that
    a resume would trust (written beside it, synced, renamed, and the rename synced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    with open(partial, "wb") as handle:
        pq.write_table(to_table(rows), handle)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def read_rows(path: str | Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def reasons_of(row: dict) -> list[str]:
    return [r for r in (row.get("reason") or "").split(";") if r]


def summary_table(rows: list[dict]) -> str:
    """Counts and seconds of clips kept and rejected, by reason (a row with several reasons is
    counted under each), plus the number of input files. `rejected` counts every rejected row:
    candidate clips and the files that yielded none."""
    clips = [r for r in rows if r["clip_index"] >= 0]
    kept = [r for r in clips if r["status"] == KEPT]
    whole_files = sum(1 for r in rows if r["clip_index"] < 0)
    by_reason: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    for row in rows:
        for reason in reasons_of(row):
            by_reason[reason] += 1
            seconds[reason] += row["duration"] or 0.0
    files = len({r["video_id"] for r in rows})
    lines = [
        f"files: {files} ({whole_files} without any candidate clip)",
        (
            f"candidate clips: {len(clips)}   kept: {len(kept)} ({sum(r['duration'] for r in kept):.1f} s)"
            f"   rejected: {len(rows) - len(kept)} ({len(clips) - len(kept)} clips, {whole_files} files)"
        ),
        f"{'reason':<24}{'rows':>8}{'seconds':>10}",
    ]
    for reason, count in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"{reason:<24}{count:>8}{seconds[reason]:>10.1f}")
    return "\n".join(lines)
