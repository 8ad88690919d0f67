"""Bucketed, compute-balanced batch planning across data-parallel ranks, with a mixture control.

The plan is a pure function of (index, seed, world size, position), computed identically on every
rank with no communication; rank r takes batch r of each step. That gives, by construction:

* one bucket per batch: a batch is cut from one bucket's shuffled samples;
* disjoint samples per rank: the batches of an epoch partition (a subset of) its samples;
* exact resume: the position (per group: epoch, step cursor, samples served) is the whole state;
* balance: the cost of every sample is estimated with the DiT's FLOP counter (attention grows with
  tokens squared, so a 720p clip is not "one sample" like a 256p image). In "cost" batching a
  batch takes as many samples of its bucket as fit a compute budget (the budget is `batch_size`
  samples of the costliest bucket, at most `max_batch_size` samples). Balanced steps are cut
  whole from one bucket (every rank gets the same shape and count); the few leftover batches of
  each bucket are grouped with their neighbours in cost order, so every rank of a step gets
  nearly the same work. Without balancing, batches are dealt to ranks in random order.

Groups ("image": single-frame samples, "video": the rest) are sampled as separate streams, each
with its own epochs; each step comes from one group, the one furthest behind its target share of
samples, so a curriculum can change the image:video mixture at any step (`set_weights`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np


@dataclass
class PlanConfig:
    batch_size: int = 2
    max_batch_size: int = 0  # 0: 4 x batch_size
    batching: Literal["cost", "fixed"] = "cost"
    balance: bool = True
    seed: int = 0
    world_size: int = 1

    @property
    def batch_cap(self) -> int:
        return self.max_batch_size or 4 * self.batch_size


def fingerprint(keys: list[str]) -> str:
    h = hashlib.sha1()
    for key in keys:
        h.update(key.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def imbalance(steps: list[list[np.ndarray]], costs: np.ndarray) -> float:
    """Sum over steps of the slowest rank's cost over the sum of the mean rank's cost: the step
    time lost to waiting for the slowest rank (1.0 is perfect balance)."""
    slowest = mean = 0.0
    for step in steps:
        per_rank = [float(costs[b].sum()) for b in step]
        slowest += max(per_rank)
        mean += sum(per_rank) / len(per_rank)
    return slowest / mean if mean else 1.0


class BatchPlanner:
    def __init__(
        self,
        costs: np.ndarray,
        buckets: list[str],
        groups: list[str],
        cfg: PlanConfig,
        weights: dict[str, float] | None = None,
        data_fingerprint: str = "",
    ):
        if not (len(costs) == len(buckets) == len(groups)) or len(costs) == 0:
            raise ValueError("the planner needs one cost, bucket and group per sample, and at least one sample")
        if cfg.batch_size < 1 or cfg.world_size < 1:
            raise ValueError("batch_size and world_size must be >= 1")
        self.cfg = cfg
        self.costs = np.asarray(costs, dtype=np.float64)
        self.data_fingerprint = data_fingerprint
        self.group_names = sorted(set(groups))
        group_arr = np.asarray(groups)
        bucket_arr = np.asarray(buckets)
        # group -> bucket -> sample indices (sorted, so the plan does not depend on index order)
        self.members: dict[str, dict[str, np.ndarray]] = {}
        for g in self.group_names:
            in_group = np.flatnonzero(group_arr == g)
            self.members[g] = {b: in_group[bucket_arr[in_group] == b] for b in sorted(set(bucket_arr[in_group]))}
        self.bucket_names = sorted(set(buckets))
        self.allowed: frozenset[str] | None = None  # a curriculum stage's bucket table; None: every bucket
        bucket_cost = [float(np.median(self.costs[bucket_arr == b])) for b in set(buckets)]
        self.budget = cfg.batch_size * max(bucket_cost)
        self.weights: dict[str, float] = {}
        self.set_weights(weights)
        self.step = 0
        self.position = {g: {"epoch": 0, "cursor": 0, "samples": 0} for g in self.group_names}
        self._cache: dict[tuple[str, int], list[list[np.ndarray]]] = {}

    # ----- mixture ---------------------------------------------------------------------------

    def set_weights(self, weights: dict[str, float] | None) -> None:
        """Target shares of samples per group (e.g. {"image": 1, "video": 3}); None follows the
        data's own proportions. Takes effect from the next step; the served-sample counts restart
        so the new ratio holds from now on rather than compensating for the past."""
        sizes = {g: float(sum(len(m) for m in self.members[g].values())) for g in self.group_names}
        if weights is None:
            new = sizes
        else:
            unknown = sorted(set(weights) - {"image", "video"} - set(self.group_names))
            if unknown:
                raise ValueError(f"unknown mixture group(s) {unknown}; groups are {self.group_names}")
            if any(w < 0 for w in weights.values()):
                raise ValueError(f"mixture weights must be >= 0, got {weights}")
            new = {g: float(weights.get(g, 0.0)) for g in self.group_names}
        if sum(new.values()) <= 0:
            raise ValueError(f"mixture {weights} gives no weight to any group present ({self.group_names})")
        if new != self.weights:
            self.weights = new
            for pos in getattr(self, "position", {}).values():
                pos["samples"] = 0

    def set_buckets(self, allowed: list[str] | None) -> None:
        """Train only on these buckets from the next step (a curriculum stage's bucket table);
        None or empty allows all. A change starts a new epoch of every group, so the plan stays
        a function of the state alone."""
        new = frozenset(allowed) if allowed else None
        if new == self.allowed:
            return
        if new is not None:
            unknown = sorted(new - set(self.bucket_names))
            if unknown:
                raise ValueError(f"bucket(s) {unknown} are not in the data; its buckets are {self.bucket_names}")
        self.allowed = new
        self._cache.clear()
        for pos in self.position.values():
            if pos["cursor"]:
                pos["epoch"] += 1
                pos["cursor"] = 0

    def _buckets_of(self, group: str) -> list[str]:
        return [b for b in sorted(self.members[group]) if self.allowed is None or b in self.allowed]

    # ----- the plan --------------------------------------------------------------------------

    def _per_batch(self, members: np.ndarray) -> int:
        """Samples per batch for a bucket: fixed, or as many as fit the compute budget."""
        cfg = self.cfg
        if cfg.batching == "fixed":
            return cfg.batch_size
        per_sample = float(np.median(self.costs[members]))
        return int(max(1, min(cfg.batch_cap, self.budget // per_sample + 1e-9)))

    def epoch_steps(self, group: str, epoch: int) -> list[list[np.ndarray]]:
        """The steps of one epoch of one group: lists of `world_size` batches of sample indices."""
        key = (group, epoch)
        if key in self._cache:
            return self._cache[key]
        cfg = self.cfg
        w = cfg.world_size
        rng = np.random.default_rng([cfg.seed, self.group_names.index(group), epoch])
        steps: list[list[np.ndarray]] = []
        leftovers: list[np.ndarray] = []
        for bucket in self._buckets_of(group):
            members = self.members[group][bucket]
            order = members[rng.permutation(len(members))]
            n = self._per_batch(members)
            if cfg.balance:
                # Whole steps from one bucket: every rank gets n samples of the same size.
                full = len(order) // (n * w) * n * w
                for s in range(0, full, n * w):
                    steps.append([order[s + r * n : s + (r + 1) * n] for r in range(w)])
                order = order[full:]
            leftovers.extend(order[i : i + n] for i in range(0, len(order), n))
        usable = len(leftovers) - len(leftovers) % w
        if cfg.balance:
            # Leftover batches of different buckets: neighbours in cost order share a step; the
            # cheapest that do not fill a step wait for a later epoch (they are reshuffled then).
            cost = np.array([self.costs[b].sum() for b in leftovers])
            order_idx = np.lexsort((rng.random(len(leftovers)), -cost))[:usable]
            for s in range(0, usable, w):
                step = [leftovers[i] for i in order_idx[s : s + w]]
                steps.append([step[i] for i in rng.permutation(w)])
            steps = [steps[i] for i in rng.permutation(len(steps))]
        else:
            order_idx = rng.permutation(len(leftovers))[:usable]
            steps = [[leftovers[i] for i in order_idx[s : s + w]] for s in range(0, usable, w)]
        if not steps:
            raise ValueError(f"group {group!r} has too few samples for one step of {w} data-parallel ranks")
        self._cache = {k: v for k, v in self._cache.items() if k[0] != group or k[1] >= epoch - 1}
        self._cache[key] = steps
        return steps

    def _choose_group(self) -> str:
        live = [g for g in self.group_names if self.weights[g] > 0 and self._buckets_of(g)]
        if not live:
            raise ValueError(f"no data for mixture {self.weights} within buckets {sorted(self.allowed or [])}")
        return min(live, key=lambda g: (self.position[g]["samples"] / self.weights[g], self.group_names.index(g)))

    def next_step(self) -> list[np.ndarray]:
        """The next step's batches, one per rank (rank r trains on element r)."""
        group = self._choose_group()
        pos = self.position[group]
        steps = self.epoch_steps(group, pos["epoch"])
        step = steps[pos["cursor"]]
        pos["cursor"] += 1
        if pos["cursor"] >= len(steps):
            pos["epoch"] += 1
            pos["cursor"] = 0
        pos["samples"] += sum(len(b) for b in step)
        self.step += 1
        return step

    # ----- state -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "world_size": self.cfg.world_size,
            "seed": self.cfg.seed,
            "fingerprint": self.data_fingerprint,
            "weights": dict(self.weights),
            "buckets": sorted(self.allowed) if self.allowed is not None else None,
            "groups": {g: dict(p) for g, p in self.position.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ours = (("world_size", self.cfg.world_size), ("seed", self.cfg.seed), ("fingerprint", self.data_fingerprint))
        for name, mine in ours:
            if state.get(name) != mine:
                raise ValueError(
                    f"data state was saved with {name} = {state.get(name)!r}, this run has {mine!r}: "
                    "the sample order cannot be continued exactly"
                )
        if set(state["groups"]) != set(self.group_names):
            raise ValueError(f"data state has groups {sorted(state['groups'])}, the shards have {self.group_names}")
        self.step = int(state["step"])
        self.allowed = frozenset(state["buckets"]) if state.get("buckets") else None
        self._cache.clear()
        self.position = {g: {k: int(v) for k, v in p.items()} for g, p in state["groups"].items()}
        if {g: float(w) for g, w in state["weights"].items()} != self.weights:
            for pos in self.position.values():  # a new mixture (curriculum stage) starts its own count
                pos["samples"] = 0
