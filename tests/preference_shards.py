"""Tiny preference exports (the annotation app's dpo.jsonl / kto.jsonl over short random clips) and
the `mugv encode` options that turn them into shards with a tiny T5 and a random tiny VAE; the
fixtures `tiny_t5` and `preference_exports` (tests/conftest.py) build them once per session."""

import json
from pathlib import Path

import numpy as np

from mugv.data.buckets import parse_buckets
from mugv.data.encode import EncodeOptions
from mugv.video import write_mp4

MISSING_CLIP = "gone.mp4"  # the one pair of dpo.jsonl whose chosen clip does not exist


def clip(path: Path, frames: int, seed: int, height: int = 32, width: int = 32) -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height // 4, width // 4, 3), dtype=np.uint8)
    write_mp4(path, [np.roll(np.kron(base, np.ones((4, 4, 1), np.uint8)), i, axis=1) for i in range(frames)], fps=12)


def write_exports(d: Path) -> Path:
    """dpo.jsonl: 3 pairs and one whose chosen clip is missing; kto.jsonl: 4 clips, labels alternating."""
    (d / "videos").mkdir()
    for i in range(6):
        clip(d / "videos" / f"v{i}.mp4", 10, i)
    pairs = [{"prompt": f"a red square moves {side}", "chosen": f"videos/v{2 * i}.mp4",
              "rejected": f"videos/v{2 * i + 1}.mp4", "aspect": "overall"}
             for i, side in enumerate(["left", "up", "down"])]
    pairs.append({"prompt": "a lost clip", "chosen": f"videos/{MISSING_CLIP}", "rejected": "videos/v0.mp4"})
    (d / "dpo.jsonl").write_text("\n".join(json.dumps(r) for r in pairs) + "\n")
    unpaired = [{"prompt": f"clip {i}", "completion": f"videos/v{i}.mp4", "label": i % 2 == 0} for i in range(4)]
    (d / "kto.jsonl").write_text("\n".join(json.dumps(r) for r in unpaired) + "\n")
    return d


def encode_options(manifest, out, tiny_t5) -> EncodeOptions:
    """One 9x32x32 bucket, shards of 2 samples; the latents fit the debug model with model.text_dim = 32."""
    return EncodeOptions(manifest=str(manifest), out=str(out), buckets=parse_buckets("9x32x32"), text_encoder="t5",
                         text_encoder_path=str(tiny_t5), vae_preset="tiny", random_vae=True, shard_size=2,
                         progress=False)
