"""The recording pass of `preference.reference = "precomputed"`: the reference model's velocity
errors of every sample of a preference shard set, each drawn with the sample's stored noise seed,
written beside the shards (`reference_errors.parquet`) and read back by the shard loader, so that
training holds one model. Record with the run's own config: the errors hold for its flow settings,
conditioning probabilities and starting weights only.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any

import torch

from mugv.config import ConfigError, RunConfig
from mugv.data.preference import REFERENCE_ERRORS_NAME, collate_preferences
from mugv.data.shards import ShardStore, read_index, split_url
from mugv.models.registry import build_model
from mugv.train.curriculum import Curriculum
from mugv.train.objectives import PreferenceObjective, build_objective
from mugv.train.trainer import load_init_weights
from mugv.utils.device import resolve_device
from mugv.utils.progress import progress_bar


def record_reference_errors(cfg: RunConfig, progress: bool = True) -> tuple[str, int]:
    """Record the errors of the model `cfg` starts from (as the trainer builds it) on every sample
    of `cfg.data.shards`; returns the file written and the number of samples."""
    objective = build_objective(cfg, Curriculum(cfg).settings(0, 0).policy)
    if not isinstance(objective, PreferenceObjective):
        raise ConfigError(f"train.objective = {cfg.train.objective!r} has no reference to record: use dpo or kto")
    if not cfg.data.shards:
        raise ConfigError("recording reference errors needs data.shards (a preference shard set from `mugv encode`)")
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)  # the trainer's initialisation, for a run without init_weights
    model = build_model(cfg.model).to(device)
    if cfg.checkpoint.init_weights:  # as the trainer reads them: a file or a training step folder
        load_init_weights(model, cfg)
    model.eval()
    use_bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()

    records = read_index(cfg.data.shards)
    if not all(r.get("preference") for r in records):
        raise ConfigError(f"data.shards = {cfg.data.shards!r} holds samples that are not preference samples")
    by_bucket: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(records, key=lambda r: r["key"]):
        by_bucket[r["bucket"]].append(r)
    store = ShardStore(cfg.data.shards, cfg.data.cache_dir)
    rows: dict[str, list] = {"key": [], "error_chosen": [], "error_rejected": []}
    size = cfg.data.batch_size
    bar = progress_bar(len(records), desc="reference errors", unit="sample", enabled=progress)
    for group in by_bucket.values():
        for start in range(0, len(group), size):
            chunk = group[start:start + size]
            batch = collate_preferences(chunk, store.read(chunk), cfg.model.max_text_tokens).to(device)
            with autocast:
                errors = objective.reference_errors(model, batch).float().cpu()
            pairs = errors if batch.paired else torch.stack([errors, torch.full_like(errors, float("nan"))], 1)
            rows["key"] += [r["key"] for r in chunk]
            rows["error_chosen"] += pairs[:, 0].tolist()
            rows["error_rejected"] += pairs[:, 1].tolist()
            bar.update(len(chunk))
    bar.close()

    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, root = split_url(cfg.data.shards)
    path = f"{root}/{REFERENCE_ERRORS_NAME}"
    with fs.open(path, "wb") as f:
        pq.write_table(pa.table(rows), f)
    return path, len(rows["key"])
