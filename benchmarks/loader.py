"""Data loading: our prefetching shard loader against a plain DataLoader, and rank balance.

    python benchmarks/loader.py                        # defaults: 50 ms simulated step
    python benchmarks/loader.py --step-ms 100 --steps 60 --text-dim 4096 --text-tokens 300

Part 1 writes a mixed-size shard set (images and videos at 256p/352p, bf16 latents and text
states) to a temporary folder, then trains nothing: each "step" sleeps `--step-ms` (standing in
for the GPU step, which releases the GIL as real CUDA work does). The same rank-0 batches of the
same plan are read (a) by `ShardSource` (`--prefetch` batches ahead, in background threads) and
(b) by a plain `torch.utils.data.DataLoader` (map-style dataset, the same batches as its batch
sampler, default num_workers=0). Prints samples/s and the fraction of wall time spent waiting for
data. Target: under 2 % wait when the step is at least 50 ms.

Part 2 plans steps for `--world` data-parallel ranks on the same shard set and prints the per-rank
compute imbalance (sum over steps of the slowest rank's FLOPs / the mean rank's FLOPs), with the
cost model of the `--model` preset: naive (fixed batch size, batches dealt at random) against
balanced (cost-budgeted batches, steps of similar cost). Target: balanced under 1.10.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mugv.config import DataConfig  # noqa: E402
from mugv.data.loader import ShardSource, collate, sample_costs  # noqa: E402
from mugv.data.sampler import BatchPlanner, PlanConfig, imbalance  # noqa: E402
from mugv.data.shards import ShardStore, read_index  # noqa: E402
from mugv.data.testing import write_random_shards  # noqa: E402
from mugv.models.dit.config import DiTConfig  # noqa: E402

MIXED = {"1x256x256": 64, "1x256x448": 64, "1x352x640": 32, "17x256x448": 48, "49x256x448": 24, "49x352x640": 16}


class PlannedBatches(torch.utils.data.Dataset):
    """Map-style dataset over shard samples: item i is (record, latents, text)."""

    def __init__(self, source: ShardSource):
        self.records = source.records
        self.store = ShardStore(source.cfg.shards)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        record = self.records[i]
        return record, *self.store.read([record])[0]


def run_loader(next_batch, steps: int, step_s: float) -> tuple[float, float]:
    """(samples/s, fraction of wall time waiting for data) over `steps` simulated steps."""
    next_batch()  # warm-up: thread start, first shard open
    waited, samples = 0.0, 0
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next_batch()
        waited += time.perf_counter() - t0
        samples += batch.size
        time.sleep(step_s)
    total = time.perf_counter() - start
    return samples / total, waited / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--step-ms", type=float, default=50.0)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--prefetch", type=int, default=4)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                   help="loader-thread counts of ShardSource to run (0: the prefetch thread loads)")
    p.add_argument("--text-dim", type=int, default=4096)
    p.add_argument("--text-tokens", type=int, default=300)
    p.add_argument("--world", type=int, default=8)
    p.add_argument("--model", default="10b")
    p.add_argument("--plan-steps", type=int, default=400)
    p.add_argument("--dir", default="", help="shard folder to create (default: a temporary one)")
    args = p.parse_args()

    tmp = tempfile.TemporaryDirectory() if not args.dir else None
    root = args.dir or tmp.name
    t0 = time.perf_counter()
    n = write_random_shards(root, MIXED, text_dim=args.text_dim, max_text_tokens=args.text_tokens, shard_size=16,
                            dtype=torch.bfloat16)
    size = sum(f.stat().st_size for f in Path(root).glob("*.safetensors")) / 2**20
    print(f"shard set: {n} samples, {size:.0f} MiB in {root} (written in {time.perf_counter() - t0:.1f} s); "
          f"buckets {', '.join(f'{k} x{v}' for k, v in MIXED.items())}")

    model = DiTConfig(text_dim=args.text_dim, max_text_tokens=args.text_tokens)
    cfg = DataConfig(source="shards", shards=root, batch_size=args.batch_size, prefetch=args.prefetch,
                     batching="fixed")
    step_s = args.step_ms / 1000
    print(f"\n[1] loading, rank 0 of 1, fixed batch size {args.batch_size}, simulated step {args.step_ms:.0f} ms, "
          f"{args.steps} steps")
    ours = {}
    variants = [(f"thread, +{w} thr", dataclasses.replace(cfg, num_workers=w)) for w in args.workers]
    for name, variant in variants:
        source = ShardSource(variant, model)
        ours[name] = run_loader(source.next_batch, args.steps, step_s)
        source.close()

    # The same batches, in the same order, through a plain DataLoader.
    planner = ShardSource(dataclasses.replace(cfg, prefetch=0), model).planner
    batches = [planner.next_step()[0].tolist() for _ in range(args.steps + 1)]
    plain_source = ShardSource(dataclasses.replace(cfg, prefetch=0), model)
    dataset = PlannedBatches(plain_source)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches,
        collate_fn=lambda items: collate([i[0] for i in items], [(i[1], i[2]) for i in items], model.max_text_tokens))
    it = iter(loader)
    plain_rate, plain_wait = run_loader(lambda: next(it), args.steps, step_s)

    print(f"{'loader':<34}{'samples/s':>12}{'data wait':>12}")
    for variant, (rate, wait) in ours.items():
        name = f"ShardSource ({variant})"
        print(f"{name:<34}{rate:>12.1f}{wait:>11.1%}")
    print(f"{'DataLoader (num_workers=0)':<34}{plain_rate:>12.1f}{plain_wait:>11.1%}")
    for variant, (rate, wait) in ours.items():
        print(f"ShardSource ({variant}): {rate / plain_rate:.2f}x the DataLoader's samples/s; wait < 2 % at "
              f">= 50 ms steps: {'met' if wait < 0.02 else 'NOT met'}")

    print(f"\n[2] balance across {args.world} data-parallel ranks, cost model of the {args.model} preset, "
          f"{args.plan_steps} steps, batch size {args.batch_size}")
    records = read_index(root)
    costs = sample_costs(records, DiTConfig.from_preset(args.model))
    buckets = [r["bucket"] for r in records]
    groups = [r["kind"] for r in records]
    rows = [("naive: fixed batches, random ranks", "fixed", False),
            ("sorted: fixed batches, balanced steps", "fixed", True),
            ("balanced: cost-budget batches + steps", "cost", True)]
    results = {}
    for name, batching, balance in rows:
        planner = BatchPlanner(costs, buckets, groups, PlanConfig(batch_size=args.batch_size, batching=batching,
                                                                 balance=balance, world_size=args.world))
        results[name] = imbalance([planner.next_step() for _ in range(args.plan_steps)], costs)
    print(f"{'sampling':<42}{'imbalance (max/mean)':>22}")
    for name, value in results.items():
        print(f"{name:<42}{value:>22.3f}")
    best = results[rows[-1][0]]
    print(f"target: balanced < 1.10: {'met' if best < 1.10 else 'NOT met'}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
