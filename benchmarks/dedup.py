"""Near-duplicate search: multi-index hashing vs comparing every pair, in the same run.

    python benchmarks/dedup.py [--clips 20000] [--repeats 3]

Hashes: 3 uniform random 64-bit hashes a clip, a third of the clips overwritten by copies of
others with 0-40 of their 192 bits flipped (so about a fifth of the copies lie within the default
mean distance of 8). Both methods must return the same pairs; the script says so, then prints the
median seconds of each and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from mugv.curate import dedup



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    hashes = dedup.near_duplicate_hashes(np.random.default_rng(0), args.clips)
    cfg = dedup.DedupConfig()
    # The brute force compares 256 rows at a time, so its [256, n, 3] XOR block stays small.
    brute_cfg = dedup.DedupConfig(block=256)
    methods = {
        "lsh": lambda: dedup.similar_pairs(cfg, hashes, None),
        "brute": lambda: dedup.brute_force_pairs(brute_cfg, hashes, None),
    }
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    results = {}
    for _ in range(args.repeats):  # interleaved, so load on the machine hits both alike
        for name, method in methods.items():
            start = time.perf_counter()
            results[name] = method()
            seconds[name].append(time.perf_counter() - start)
    if results["lsh"] != results["brute"]:
        raise SystemExit("multi-index hashing and brute force disagree")
    lsh, brute = statistics.median(seconds["lsh"]), statistics.median(seconds["brute"])
    clusters = len(set(dedup.cluster(len(hashes), results["lsh"])))
    print(f"{args.clips} clips, {len(results['lsh'])} near-duplicate pairs ({args.clips - clusters} duplicates), identical results")
    print(f"brute force (all pairs): {brute:.2f} s; multi-index hashing: {lsh:.2f} s; speed-up {brute / lsh:.1f}x (median of {args.repeats})")


if __name__ == "__main__":
    main()
