"""Gold items for free: degraded copies of a clean clip whose right answer is known.

A clip beats its own frozen, shuffled, blurred or wrongly coloured copy; a degraded copy fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mugv.annotate.campaign import CampaignFile, Gold, Video
from mugv.video.synthetic import blur, freeze

DEGRADATIONS = ("frozen", "shuffled", "blur", "colour")


def degrade(frames: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """[T, H, W, 3] uint8 frames with one visible defect."""
    if kind == "frozen":
        return freeze(frames)
    if kind == "shuffled":
        order = np.random.default_rng(seed).permutation(len(frames))
        if len(frames) > 1 and np.all(order == np.arange(len(frames))):
            order = order[::-1]
        return frames[order]
    if kind == "blur":
        return blur(frames, sigma=max(2.0, min(frames.shape[1:3]) / 40))
    if kind == "colour":
        return np.ascontiguousarray(frames[..., ::-1])  # red and blue swapped: skies turn orange
    raise ValueError(f"unknown degradation {kind!r}; known: {', '.join(DEGRADATIONS)}")


def add_gold(spec: CampaignFile, root: Path, count: int, kinds: tuple[str, ...] = DEGRADATIONS,
             folder: str = "gold") -> list[Video]:
    """Write `count` degraded copies of the campaign's clean videos under root/folder and add them to
    `spec` as videos plus gold items (pairwise: the clean clip wins; grade: the copy fails)."""
    from mugv.video.reader import decode
    from mugv.video.writer import write_mp4

    unknown = [k for k in kinds if k not in DEGRADATIONS]
    if unknown:
        raise ValueError(f"unknown degradation {unknown[0]!r}; known: {', '.join(DEGRADATIONS)}")
    sources = [v for v in spec.videos if not v.degraded_from]
    if not sources or count <= 0:
        return []
    rng = np.random.default_rng(spec.seed)
    picks = rng.choice(len(sources), size=count, replace=count > len(sources))
    (root / folder).mkdir(parents=True, exist_ok=True)
    added = []
    for n, index in enumerate(picks):
        source = sources[int(index)]
        kind = kinds[n % len(kinds)]
        path = Path(source.path) if Path(source.path).is_absolute() else root / source.path
        video = decode(path)
        frames = np.asarray(video.frames)
        relative = f"{folder}/{source.id}.{kind}.{n}.mp4"
        write_mp4(root / relative, degrade(frames, kind, seed=spec.seed + n), fps=video.info.fps)
        copy = Video(id=f"{source.id}.{kind}.{n}", path=relative, prompt=source.prompt, prompt_id=source.prompt_id,
                     model=source.model, seed=source.seed, image=source.image, degraded_from=source.id,
                     degradation=kind)
        spec.videos.append(copy)
        if spec.mode == "grade":
            spec.gold.append(Gold(videos=[copy.id], expected="fail"))
        else:
            spec.gold.append(Gold(videos=[source.id, copy.id], expected=source.id))
        added.append(copy)
    return added
