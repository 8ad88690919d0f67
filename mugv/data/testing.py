"""Random shard sets of chosen bucket mixes, for tests and the loader benchmark (no VAE needed)."""

from __future__ import annotations

import torch

from mugv.data.buckets import Bucket
from mugv.data.shards import ShardWriter, write_index


def write_random_shards(
    root: str,
    buckets: dict[str, int],
    *,
    text_dim: int = 64,
    max_text_tokens: int = 16,
    latent_channels: int = 24,
    shard_size: int = 8,
    seed: int = 0,
    fps: float = 24.0,
    dtype: torch.dtype = torch.float32,
) -> int:
    """Write `count` random samples for each `"FRAMESxHxW": count` bucket (pixel sizes, shuffled
    across shards) and the index; returns the number of samples. Sample i's latents are filled
    with its number in channel 0, position (0, 0, 0), so tests can tell samples apart."""
    g = torch.Generator().manual_seed(seed)
    plan = [Bucket.parse(name) for name, count in buckets.items() for _ in range(count)]
    order = torch.randperm(len(plan), generator=g).tolist()
    writer = ShardWriter(root, prefix="rand", shard_size=shard_size, dtype=dtype)
    for number, i in enumerate(order):
        bucket = plan[i]
        t, h, w = bucket.latent_shape
        latents = torch.randn(latent_channels, t, h, w, generator=g)
        latents[0, 0, 0, 0] = number
        tokens = int(torch.randint(1, max_text_tokens + 1, (1,), generator=g))
        record = {
            "key": f"sample-{number:06d}",
            "clip_id": f"clip-{number:06d}",
            "source": "random",
            "kind": bucket.kind,
            "bucket": bucket.name,
            "frames": bucket.frames,
            "height": bucket.height,
            "width": bucket.width,
            "fps": fps,
            "caption": f"random sample {number}",
        }
        writer.add(record, latents, torch.randn(tokens, text_dim, generator=g))
    writer.close()
    return write_index(root)


def sample_numbers(latents: torch.Tensor) -> list[int]:
    """The numbers `write_random_shards` stamped into a batch's latents."""
    return [int(round(float(v))) for v in latents[:, 0, 0, 0, 0]]
