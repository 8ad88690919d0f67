"""Gather what the demo's stages wrote into figures, and write report.html."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from mugv.demo.adherence import score
from mugv.demo.report import Section, Video, write_report
from mugv.demo.world import Scene


def curation_sections(manifest: Path, truth_csv: Path) -> list[Section]:
    clips = pd.read_parquet(manifest)
    truth = pd.read_csv(truth_csv)
    merged = clips.merge(truth, on="path", how="left")
    reasons = Counter()
    for reason in clips.loc[clips["status"] != "kept", "reason"]:
        for part in str(reason).split(";"):
            reasons[part] += 1
    by_reason = [["kept", int((clips["status"] == "kept").sum())]] + [[r, n] for r, n in reasons.most_common()]

    by_kind = []
    for kind, group in merged.groupby("kind"):
        kept = int((group["status"] == "kept").sum())
        top = Counter(p for r in group.loc[group["status"] != "kept", "reason"] for p in str(r).split(";"))
        by_kind.append([kind, int(group["path"].nunique()), len(group), kept,
                        ", ".join(f"{r} ({n})" for r, n in top.most_common(3))])

    cut_rows = []
    for path, group in merged[merged["kind"] == "cut"].groupby("path"):
        truth_frame = int(group["cut_frame"].iloc[0])
        starts = sorted(int(s) for s in group["start_frame"])
        found = [s for s in starts if s > 0]
        nearest = min(found, key=lambda s: abs(s - truth_frame)) if found else None
        cut_rows.append([Path(path).name, truth_frame, ", ".join(map(str, starts)),
                         "yes" if nearest is not None and abs(nearest - truth_frame) <= 3 else "no"])

    dup = clips[clips["dup_cluster"].notna() & (clips["dup_cluster"].astype(str) != "")] if "dup_cluster" in clips else clips[:0]
    return [
        Section("Curation", f"{clips['path'].nunique()} videos -> {len(clips)} candidate clips; "
                f"{by_reason[0][1]} kept. Every rejection carries its reasons (a clip may have several).",
                tables=[(["outcome", "clips"], by_reason),
                        (["planted kind", "videos", "clips", "kept", "main rejection reasons"], by_kind),
                        (["video with a hard cut", "true cut frame", "clip start frames found", "cut found"], cut_rows)]),
        Section("Deduplication", f"{len(dup)} clips fell in near-duplicate clusters; the best-scoring clip of each "
                "cluster is kept, the rest are rejected as duplicates."),
    ]


def vae_section(vae_dir: Path) -> Section:
    rows = []
    for label, name in (("before training (random init)", "eval-before.json"), ("after training", "eval-after.json")):
        path = vae_dir / name
        if path.is_file():
            result = json.loads(path.read_text())
            rows.append([label, result["mean_psnr"], result["mean_ssim"], result["encode_frames_per_second"],
                         result["decode_frames_per_second"]])
    return Section("Video VAE (tiny)", "Reconstruction of held-out synthetic clips (never used in training).",
                   tables=[(["VAE", "PSNR (dB)", "SSIM", "encode frames/s", "decode frames/s"], rows)],
                   images=[p for p in (vae_dir / "loss.png",) if p.is_file()])


def training_section(dit_dir: Path) -> Section:
    losses = [json.loads(line) for line in (dit_dir / "metrics.jsonl").read_text().splitlines()]
    first = sum(m["loss"] for m in losses[:20]) / max(len(losses[:20]), 1)
    last = sum(m["loss"] for m in losses[-20:]) / max(len(losses[-20:]), 1)
    rate = sum(m["samples_per_s"] for m in losses[-20:]) / max(len(losses[-20:]), 1)
    return Section("DiT training", f"{len(losses)} steps; mean loss of the first 20 steps {first:.4f}, of the last 20 "
                   f"{last:.4f}; {rate:.1f} samples/s.", images=[dit_dir / "loss.png"])


def filmstrip(frames: np.ndarray, path: Path, count: int = 5) -> Path:
    """`count` evenly spaced frames of (T, H, W, 3) side by side as a png: the motion in a still."""
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    Image.fromarray(np.concatenate([frames[i] for i in picks], axis=1)).save(path)
    return path


def generation_section(videos: list[tuple[Path, Scene]]) -> tuple[Section, dict]:
    from mugv.video.reader import decode

    clips = [(path, scene, decode(path).frames) for path, scene in videos]
    report = score([(scene, frames) for _, scene, frames in clips])
    shown = []
    for (path, scene, frames), row in zip(clips, report.rows):
        kind = "I2V" if path.stem.startswith("i2v") else "T2V"
        note = (f"{kind}; seen: {row['seen_color'] or 'no shape'}, {row['seen_shape'] or 'no shape'}, "
                f"{row['seen_direction'] or 'no motion'}")
        shown.append(Video(path, scene.caption, note=note,
                           ok=bool(row["color_ok"] and row["direction_ok"] and row["shape_ok"]),
                           strip=filmstrip(frames, path.with_suffix(".frames.png"))))
    readings = {(row["seen_color"], row["seen_shape"], row["seen_direction"]) for row in report.rows}
    asked = {(row["color"], row["shape"], row["direction"]) for row in report.rows}
    figures = {"color_accuracy": report.color_accuracy, "direction_accuracy": report.direction_accuracy,
               "shape_accuracy": report.shape_accuracy, "videos": len(report.rows),
               "distinct_readings": len(readings), "distinct_prompts": len(asked)}
    text = (f"Prompts never seen in training (new colour/shape/direction combinations) and one image-to-video case. "
            f"Colour accuracy {report.color_accuracy:.0%}, shape accuracy {report.shape_accuracy:.0%}, direction "
            f"accuracy {report.direction_accuracy:.0%} over {len(report.rows)} videos, read off the frames by "
            f"mugv.demo.adherence. The videos show {len(readings)} distinct colour/shape/direction reading(s) for "
            f"{len(asked)} distinct prompts: a model that ignores its text shows one, and then its accuracy is only "
            "the share of prompts that match it.")
    return Section("Generated videos", text, videos=shown), figures


def write_demo_report(demo, manifest: Path, dit_dir: Path, videos: list[tuple[Path, Scene]], eval_dir: Path,
                      grades: dict, preferences: dict) -> Path:
    from mugv.demo.assess import annotation_section, eval_section
    from mugv.demo.posttrain import post_training_section

    generation, figures = generation_section(videos)
    post_training, figures["post_training"] = post_training_section(demo.out, videos, preferences)
    (demo.out / "adherence.json").write_text(json.dumps(figures, indent=2))
    timings = [[name, round(seconds, 1)] for name, seconds in demo.timings.items()]
    total = sum(demo.timings.values())
    sections = [
        *curation_sections(manifest, demo.out / "corpus" / "truth.csv"),
        vae_section(demo.out / "vae"),
        training_section(dit_dir),
        generation,
        eval_section(eval_dir),
        annotation_section(grades),
        post_training,
        Section("Time per stage", f"{total / 60:.1f} minutes in all (the report itself not counted).",
                tables=[(["stage", "seconds"], timings)]),
    ]
    return write_report(demo.out / "report.html", "mugv demo",
                        "raw videos -> curation -> VAE -> shards -> DiT -> generation, on this machine", sections)
