"""Small synthetic footage with known content and a test configuration for the curation tests."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from mugv.config import load_config
from mugv.curate.config import CurateConfig
from mugv.video import synthetic, write_mp4

HEIGHT, WIDTH, FPS, SHOT = 144, 192, 24, 48  # 2-second shots


def shot(seed: int, frames: int = SHOT, **kwargs) -> np.ndarray:
    return synthetic.panning_shot(seed, frames, HEIGHT, WIDTH, speed=kwargs.pop("speed", 2.0), **kwargs)


def curate_config(*overrides: str) -> CurateConfig:
    """Defaults, with clips short enough for 2-second shots, in-process and without progress bar."""
    base = ["--clips.min_seconds=1.5", "--run.workers=1", "--run.progress=false"]
    return load_config(None, base + list(overrides), cls=CurateConfig)


def judge_that_kills_its_process(frames: np.ndarray, metadata: dict) -> list[str]:
    """A judge hook standing in for a native crash (segfault, OOM kill) on one file."""
    if os.path.basename(metadata["path"]) == "crash.mp4":
        os._exit(1)
    return []


def judge_that_takes_its_time(frames: np.ndarray, metadata: dict) -> list[str]:
    """A judge hook standing in for a slow stage, so that a run can be killed half way."""
    time.sleep(0.3)
    return []


def judge_that_damages_later_inputs(frames: np.ndarray, metadata: dict) -> list[str]:
    """A judge hook that, while the first file is curated, deletes `vanishes.mp4` and truncates
    `shrinks.mp4` beside it: inputs that change after they were listed."""
    folder = os.path.dirname(metadata["path"])
    if os.path.exists(vanishing := os.path.join(folder, "vanishes.mp4")):
        os.remove(vanishing)
    shrinking = os.path.join(folder, "shrinks.mp4")
    if os.path.getsize(shrinking) > 1000:
        with open(shrinking, "r+b") as f:
            f.truncate(1000)
    return []


def write_corpus(folder: Path, shots: dict[str, np.ndarray]) -> Path:
    """Synthetic videos with known cuts, a dissolve, blur, a still, text and a duplicate, beside
    a caption sidecar, a text file and an audio-only file (the `shots` fixture's shots a-d)."""
    a, b, c = shots["a"], shots["b"], shots["c"]
    write_mp4(folder / "cuts.mp4", np.concatenate([a, b, c]), FPS)  # cuts at frames 48 and 96
    write_mp4(
        folder / "dissolve.mp4", synthetic.dissolve(np.concatenate([c, c[::-1]]), shot(4, frames=72), 16), FPS
    )  # blend 80..95
    write_mp4(folder / "blur.mp4", synthetic.blur(shot(11)), FPS)
    write_mp4(folder / "still.mp4", synthetic.freeze(shot(12)), FPS)
    write_mp4(folder / "text.mp4", synthetic.overlay_text(shot(13)), FPS)
    write_mp4(folder / "nested_copy.mp4", a, FPS)  # the first shot of cuts.mp4 again
    (folder / "sub").mkdir()
    write_mp4(folder / "sub" / "pan.mp4", shot(14, frames=60, speed=3.0), FPS)
    (folder / "sub" / "pan.txt").write_text("A man rides a bicycle down a city street.")
    (folder / "notes.md").write_text("not a video, but a file of the input all the same")
    synthetic.write_audio_only(folder / "sub" / "voice.m4a")
    return folder
