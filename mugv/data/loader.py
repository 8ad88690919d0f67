"""The shard data source: planned, bucketed, balanced batches loaded ahead in background threads.

`ShardSource` is a trainer data source (`next_batch`, `state_dict`, `load_state_dict`). A producer
thread walks the batch plan (`mugv.data.sampler`) and hands this rank's batch of each step to a
pool of loader threads; up to `prefetch` batches are in flight, and they come back in plan order.
Reading a sample is a safetensors slice of a (locally cached) shard plus a CRC32 check, and the
collated tensors are pinned when a GPU exists, so the copy to the device can overlap compute.

The state saved in a checkpoint is the plan position of the last batch *handed out*, not of the
batches prefetched, so a resumed run continues with the next batch: no sample lost or repeated.
"""

from __future__ import annotations

import queue
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from mugv.config import DataConfig
from mugv.data.batch import LatentBatch
from mugv.data.sampler import BatchPlanner, PlanConfig, fingerprint
from mugv.data.shards import ShardError, ShardStore, read_index
from mugv.models.dit.config import DiTConfig


def _into_f32(out: np.ndarray, t: torch.Tensor) -> None:
    """Copy a CPU tensor into the float32 array `out`, in numpy: bf16 widens by a bit shift. (Torch's
    own conversions run on its intra-op thread pool, which the training step needs, and crawl on
    a busy machine; numpy stays on the loader thread and releases the GIL.)"""
    if t.dtype == torch.bfloat16:
        np.left_shift(t.view(torch.int16).numpy().view(np.uint16), 16, out=out.view(np.uint32), dtype=np.uint32)
    else:
        out[...] = t.numpy()


def collate(records: list[dict[str, Any]], tensors: list[tuple[torch.Tensor, torch.Tensor]], max_text_tokens: int,
            pin: bool = False) -> LatentBatch:
    """Stack one bucket's samples as float32; text is padded to the longest caption of the batch
    (at most `max_text_tokens`), with the mask marking real tokens."""
    shapes = {tuple(t[0].shape) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"a batch must hold one bucket, got latent shapes {sorted(shapes)}")
    b = len(tensors)
    latents = np.empty((b, *tensors[0][0].shape), dtype=np.float32)
    length = min(max(t[1].shape[0] for t in tensors), max_text_tokens)
    text = np.zeros((b, length, tensors[0][1].shape[1]), dtype=np.float32)
    mask = np.zeros((b, length), dtype=np.bool_)
    for row, (lat, txt) in enumerate(tensors):
        _into_f32(latents[row], lat)
        n = min(txt.shape[0], length)
        _into_f32(text[row, :n], txt[:n])
        mask[row, :n] = True
    parts = [torch.from_numpy(x) for x in (latents, text, mask)]
    parts.append(torch.tensor([float(r["fps"]) for r in records]))
    if pin:
        parts = [x.pin_memory() for x in parts]
    return LatentBatch(latents=parts[0], text=parts[1], text_mask=parts[2], fps=parts[3],
                       pixel_height=int(records[0]["height"]), pixel_width=int(records[0]["width"]))


def sample_costs(records: list[dict[str, Any]], model: DiTConfig) -> np.ndarray:
    """Estimated training FLOPs of each sample (the DiT's counter: tokens^2 attention + linear)."""
    cache: dict[tuple[int, int, int, int], float] = {}
    out = np.empty(len(records))
    for i, r in enumerate(records):
        key = (r["latent_frames"], r["latent_height"], r["latent_width"], min(r["text_tokens"], model.max_text_tokens))
        if key not in cache:
            cache[key] = float(model.train_flops(*key))
        out[i] = cache[key] * (2 if r.get("preference") == "pair" else 1)  # a pair trains on both its clips
    return out


def mixture_weights(image_fraction: float) -> dict[str, float] | None:
    """`data.image_fraction` as planner weights; negative follows the data's own proportions."""
    if image_fraction < 0:
        return None
    return {"image": image_fraction, "video": 1.0 - image_fraction}


class ShardSource:
    def __init__(self, cfg: DataConfig, model: DiTConfig, *, seed: int = 0, dp_rank: int = 0, dp_world_size: int = 1):
        if not cfg.shards:
            raise ValueError("data.source = 'shards' needs data.shards (a folder or fsspec URL of encoded shards)")
        if not 0 <= dp_rank < dp_world_size:
            raise ValueError(f"data-parallel rank {dp_rank} is outside world size {dp_world_size}")
        self.cfg = cfg
        self.model = model
        self.rank = dp_rank
        self.world_size = dp_world_size
        self.store = ShardStore(cfg.shards, cfg.cache_dir)
        self.bad_shards: dict[str, str] = {}
        self.bad_samples: list[str] = []
        records = self._usable_records(read_index(cfg.shards))
        records.sort(key=lambda r: r["key"])
        if records[0].get("preference"):  # the errors of a precomputed reference, when recorded
            from mugv.data.preference import attach_reference_errors

            attach_reference_errors(cfg.shards, records)
        self._check_widths(records)
        self.records = records
        self.costs = sample_costs(records, model)
        plan = PlanConfig(batch_size=cfg.batch_size, max_batch_size=cfg.max_batch_size, batching=cfg.batching,
                          balance=cfg.balance, seed=seed, world_size=dp_world_size)
        self.planner = BatchPlanner(
            self.costs, [r["bucket"] for r in records], [r["kind"] for r in records], plan,
            weights=mixture_weights(cfg.image_fraction), data_fingerprint=fingerprint([r["key"] for r in records]),
        )
        self.pin = cfg.pin_memory and torch.cuda.is_available()
        self._state = self.planner.state_dict()
        self._threads_started = False
        self._warned_truncation = False

    # ----- set-up ----------------------------------------------------------------------------

    def _usable_records(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        shards = sorted({r["shard"] for r in records})
        with ThreadPoolExecutor(max_workers=8) as pool:
            reasons = list(pool.map(self.store.check, shards))
        for shard, reason in zip(shards, reasons):
            if reason is None:
                continue
            if self.cfg.strict:
                raise ShardError(f"shard {shard} under {self.cfg.shards}: {reason} (data.strict = true)")
            warnings.warn(f"skipping shard {shard} under {self.cfg.shards}: {reason}", stacklevel=3)
            self.bad_shards[shard] = reason
        usable = [r for r in records if r["shard"] not in self.bad_shards]
        if not usable:
            raise ShardError(f"no usable shards under {self.cfg.shards}: {self.bad_shards}")
        return usable

    def _check_widths(self, records: list[dict[str, Any]]) -> None:
        dims = {r["text_dim"] for r in records}
        chans = {r["latent_channels"] for r in records}
        if dims != {self.model.text_dim}:
            raise ValueError(f"shards hold text of width {sorted(dims)} but model.text_dim = {self.model.text_dim}; "
                             "the DiT's text width must follow the text encoder the shards were encoded with")
        if chans != {self.model.in_channels}:
            raise ValueError(f"shards hold {sorted(chans)}-channel latents but "
                             f"model.in_channels = {self.model.in_channels}")

    # ----- loading ---------------------------------------------------------------------------

    def _load(self, batch: np.ndarray) -> LatentBatch:
        records = [self.records[i] for i in batch]
        try:
            tensors = self.store.read(records, verify=self.cfg.verify_checksums)
        except ShardError as exc:
            if self.cfg.strict:
                raise
            # Read the samples one by one so only the bad ones are left out of the batch.
            kept_r, kept_t = [], []
            for r in records:
                try:
                    kept_t.append(self.store.read([r], verify=self.cfg.verify_checksums)[0])
                    kept_r.append(r)
                except ShardError as one:
                    warnings.warn(f"skipping sample {r['key']}: {one}", stacklevel=2)
                    self.bad_samples.append(r["key"])
            if not kept_r:
                raise ShardError(f"every sample of a batch is unreadable ({exc})") from exc
            records, tensors = kept_r, kept_t
        if not self._warned_truncation and max(t[1].shape[0] for t in tensors) > self.model.max_text_tokens:
            self._warned_truncation = True
            warnings.warn(f"captions longer than model.max_text_tokens = {self.model.max_text_tokens} are truncated",
                          stacklevel=2)
        if records[0].get("preference"):
            from mugv.data.preference import collate_preferences

            return collate_preferences(records, tensors, self.model.max_text_tokens, pin=self.pin)
        return collate(records, tensors, self.model.max_text_tokens, pin=self.pin)

    def _start(self) -> None:
        self.planner.load_state_dict(self._state)  # restart from the last batch handed out
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, self.cfg.prefetch))
        self._pool = ThreadPoolExecutor(max_workers=self.cfg.num_workers) if self.cfg.num_workers > 0 else None
        self._producer = threading.Thread(target=self._produce, name="mugv-shard-prefetch", daemon=True)
        self._producer.start()
        self._threads_started = True

    def _produce(self) -> None:
        stop = self._stop
        while not stop.is_set():
            try:
                step = self.planner.next_step()
                state = self.planner.state_dict()
                if self._pool is not None:
                    item: Future | LatentBatch | BaseException = self._pool.submit(self._load, step[self.rank])
                else:
                    item = self._load(step[self.rank])
            except BaseException as exc:  # handed to the consumer, which raises it
                item, state = exc, None
            while not stop.is_set():
                try:
                    self._queue.put((item, state), timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def close(self) -> None:
        """Stop the background threads (prefetched batches are dropped; the state is kept)."""
        if not self._threads_started:
            return
        self._stop.set()
        self._producer.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._threads_started = False

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # ----- the data-source protocol ----------------------------------------------------------

    def next_batch(self) -> LatentBatch:
        if self.cfg.prefetch <= 0:  # synchronous: plan and load in the caller's thread
            step = self.planner.next_step()
            batch = self._load(step[self.rank])
            self._state = self.planner.state_dict()
            return batch
        if not self._threads_started:
            self._start()
        item, state = self._queue.get()
        if isinstance(item, BaseException):
            self._threads_started = False
            raise item
        batch = item.result() if isinstance(item, Future) else item
        self._state = state
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {**self._state, "weights": dict(self._state["weights"])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.close()
        self.planner.load_state_dict(state)
        self._state = self.planner.state_dict()

    def set_mixture(self, image_fraction: float | None = None, weights: dict[str, float] | None = None) -> None:
        """Change the image:video mixture from the next batch on (a curriculum stage calls this).
        `image_fraction` in [0, 1], or explicit group `weights`; neither follows the data."""
        if image_fraction is not None and weights is not None:
            raise ValueError("give image_fraction or weights, not both")
        if image_fraction is not None:
            if not 0.0 <= image_fraction <= 1.0:
                raise ValueError(f"image_fraction = {image_fraction} must be within [0, 1]")
            weights = mixture_weights(image_fraction)
        self.close()  # prefetched batches were planned with the old mixture
        self.planner.load_state_dict(self._state)
        self.planner.set_weights(weights)
        self._state = self.planner.state_dict()

    def set_buckets(self, allowed: list[str] | None) -> None:
        """Restrict training to these buckets from the next batch on (a curriculum stage's table)."""
        self.close()  # prefetched batches were planned with the old table
        self.planner.load_state_dict(self._state)
        self.planner.set_buckets(allowed)
        self._state = self.planner.state_dict()

