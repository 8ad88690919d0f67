"""Small synthetic footage with known content and a test configuration for the curation tests."""

from __future__ import annotations

import os
import time

import numpy as np

from mugv.config import load_config
from mugv.curate.config import CurateConfig
from mugv.video import synthetic

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
