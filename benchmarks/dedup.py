"""Near-duplicate search at scale: LSH (the default) against exact multi-index hashing, same run.

    python benchmarks/dedup.py [--sizes 20000 200000 2000000] [--exact-cap 300]

Hashes: 3 uniform random 64-bit hashes a clip; the last third of the clips are copies of random
earlier ones with 0-40 of their 192 bits flipped (`dedup.planted_near_duplicates`). The true
pairs at the default mean distance of 8 (24 bits) are the close pairs within each copy family
(`dedup.planted_pairs`); wherever the exact method runs, the script checks that they are exactly
its all-pairs answer. For each size it prints the seconds of each method, the LSH pairs' recall
(of true pairs, and of duplicate clips: clips that end in the same cluster as with the true
pairs), that no reported pair is false, the LSH search's peak memory (beside the hashes) and the machine's load. The exact
method runs while its time, extrapolated as n^2 from the last size, stays under --exact-cap.
Then both are extrapolated to 10M and 100M clips from the growth measured between the two
largest sizes each ran at, LSH also from its cost per clip and band at the largest size times
the clips and bands it would need (its work is a sort and about one check per clip and band).
"""

from __future__ import annotations

import argparse
import math
import os
import time
import tracemalloc

import numpy as np

from mugv.curate import dedup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000, 2_000_000])
    parser.add_argument("--exact-cap", type=float, default=300.0, help="seconds the exact method may be expected to take")
    args = parser.parse_args()
    cfg = dedup.DedupConfig()
    print(f"{os.cpu_count()} CPUs, load average {_load()} at the start; recall target {cfg.recall} at mean distance {cfg.max_hash_distance}")
    print("| clips | true pairs | LSH s | LSH bands x bits | pair recall | duplicate-clip recall | false pairs | exact s | exact / LSH | LSH peak memory | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    lsh_times: dict[int, float] = {}
    lsh_band_count: dict[int, int] = {}
    exact_times: dict[int, float] = {}
    for clips in args.sizes:
        hashes, source = dedup.planted_near_duplicates(np.random.default_rng(0), clips)
        truth = dedup.planted_pairs(hashes, source, cfg.max_hash_distance)
        tracemalloc.start()  # numpy reports its buffers to it
        start = time.perf_counter()
        found = dedup.similar_pairs(cfg, hashes, None)
        lsh_times[clips] = time.perf_counter() - start
        lsh_memory = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        max_total = dedup._max_total_distance(cfg.max_hash_distance, hashes.shape[1])
        bands = dedup.lsh_bands(clips, hashes.shape[1], max_total, cfg.recall, cfg.seed)
        lsh_band_count[clips] = len(bands)
        exact_cell, ratio_cell = "skipped", "-"
        if exact_times:
            last = max(exact_times)
            expected = exact_times[last] * (clips / last) ** 2
        else:
            expected = 0.0
        if expected <= args.exact_cap:
            start = time.perf_counter()
            exact = dedup.similar_pairs(dedup.DedupConfig(method="exact"), hashes, None)
            exact_times[clips] = time.perf_counter() - start
            if exact != truth:
                raise SystemExit(f"{clips} clips: the planted pairs are not the all-pairs answer")
            exact_cell, ratio_cell = f"{exact_times[clips]:.1f}", f"{exact_times[clips] / lsh_times[clips]:.2f}x"
        else:
            exact_cell = f"skipped (~{expected:.0f} s as n^2)"
        true_set = set(truth)
        hits = sum(pair in true_set for pair in found)
        false_pairs = len(found) - hits
        print(
            f"| {clips:,} | {len(truth):,} | {lsh_times[clips]:.1f} | {len(bands)} x {bands.shape[1]} | {hits / len(truth):.4f} "
            f"| {_duplicate_recall(clips, found, truth):.4f} | {false_pairs} | {exact_cell} | {ratio_cell} | {lsh_memory / 2**20:,.1f} MB | {_load()} |",
            flush=True,
        )
        if false_pairs:
            raise SystemExit(f"{clips} clips: {false_pairs} reported pairs are not within the threshold")
    print(_extrapolation("LSH", lsh_times))
    # The work itself: a sort and about one check per clip and band, and the bands grow slowly.
    largest = max(lsh_times)
    per_clip_band = lsh_times[largest] / (largest * lsh_band_count[largest])
    guesses = []
    for target in (10**7, 10**8):
        bands = len(dedup.lsh_bands(target, 3, max_total, cfg.recall, cfg.seed))
        guesses.append(f"{target // 10**6}M clips x {bands} bands ~{per_clip_band * target * bands / 60:,.0f} min")
    print(f"LSH at {per_clip_band * 1e9:.0f} ns per clip and band (as at {largest:,}): " + ", ".join(guesses))
    print(_extrapolation("exact", exact_times))
    if exact_times:  # its candidates are a fixed share of all pairs: n^2 in the end
        last = max(exact_times)
        print("exact as n^2: " + ", ".join(f"{t // 10**6}M clips ~{exact_times[last] * (t / last) ** 2 / 3600:,.0f} h" for t in (10**7, 10**8)))


def _duplicate_recall(clips: int, found: list[tuple[int, int]], truth: list[tuple[int, int]]) -> float:
    """Share of the clips that the true pairs mark as duplicates (all but one of each cluster)
    that the found pairs mark too."""
    true_roots = np.array(dedup.cluster(clips, truth))
    found_roots = np.array(dedup.cluster(clips, found))
    duplicates = true_roots != np.arange(clips)
    return float(np.mean(found_roots[duplicates] != np.flatnonzero(duplicates))) if duplicates.any() else 1.0


def _extrapolation(name: str, times: dict[int, float]) -> str:
    if len(times) < 2:
        return f"{name}: ran at one size only, no growth to extrapolate from"
    small, large = sorted(times)[-2:]
    exponent = math.log(times[large] / times[small]) / math.log(large / small)
    guesses = ", ".join(f"{target // 10**6}M clips ~{times[large] * (target / large) ** exponent / 60:,.0f} min" for target in (10**7, 10**8))
    return f"{name}: time grows as n^{exponent:.2f} between {small:,} and {large:,} clips; extrapolated: {guesses}"


def _load() -> str:
    return "/".join(f"{value:.0f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
