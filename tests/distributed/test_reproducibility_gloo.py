"""Same seed, same machine: bit-identical weights under torchrun-style process groups too.

Two spawns of 2 gloo ranks (FSDP over both) train the debug DiT from the same shards, copied to
two folders, each rank's loader with its prefetch thread and worker threads; every rank's weight
shards must come out bit-identical.
"""

from __future__ import annotations

import hashlib
import shutil

import torch
import torch.distributed as dist
from dist_harness import run_scenarios

from mugv.data.testing import write_random_shards


def train_on_shards(rank: int, world: int, shards: str, run_dir: str) -> dict:
    from torch.distributed.tensor import DTensor

    from mugv.config import load_config
    from mugv.train.trainer import Trainer

    cfg = load_config("shards-debug", [
        f"--data.shards={shards}", f"--run_dir={run_dir}", f"--data.cache_dir={run_dir}/cache",
        "--data.prefetch=3", "--data.num_workers=2", "--data.i2v_prob=0.5", "--data.caption_dropout=0.3",
        "--model.text_dim=64", "--model.max_text_tokens=16", "--train.steps=4", "--optim.warmup_steps=1",
        "--train.device=cpu", "--checkpoint.every_steps=0", "--logging.progress=false", "--logging.tensorboard=false"])
    trainer = Trainer(cfg)
    losses = [m["loss"] for m in trainer.fit()]
    weights = hashlib.sha256()
    for name, value in trainer.model.state_dict().items():
        local = value.to_local() if isinstance(value, DTensor) else value
        weights.update(name.encode())
        weights.update(local.detach().contiguous().view(torch.uint8).numpy().tobytes())
    per_rank = [None] * world
    dist.all_gather_object(per_rank, weights.hexdigest())
    return {"losses": losses, "weights": per_rank}


def test_two_rank_training_is_bit_identical_run_to_run(tmp_path):
    source = tmp_path / "shards"
    write_random_shards(str(source), {"1x32x32": 12, "9x32x32": 8, "17x32x48": 8}, shard_size=5)
    results = []
    for i in range(2):
        copy = tmp_path / f"place{i}" / ("deeper/" * i) / "shards"
        shutil.copytree(source, copy)
        outcome = run_scenarios(2, [("train", train_on_shards, {"shards": str(copy), "run_dir": str(tmp_path / f"run{i}")})])
        status, result = outcome["train"]
        assert status == "ok", result
        results.append(result)
    assert len(results[0]["losses"]) == 4 and len(set(results[0]["weights"])) == 2  # each rank its own shard
    assert results[0] == results[1]
