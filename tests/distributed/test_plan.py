"""The dry-run plan: the real mesh and parallelization on the meta device under a fake process
group, with per-rank memory estimates."""

from __future__ import annotations

import re

import torch.distributed as dist

from mugv.cli import main
from mugv.config import load_config
from mugv.distributed.parallel_dims import ParallelDims
from mugv.distributed.plan import _meta_local_params


def test_dry_run_plans_a_tp_pp_fsdp_layout(capsys):
    code = main(["train", "--config", "debug", "--dry-run", "--world-size", "64", "--model.preset=2b",
                 "--parallel.tp=4", "--parallel.pp=2", "--parallel.pp_microbatches=2", "--data.batch_size=2",
                 "--data.text_tokens=16"])
    out = capsys.readouterr().out
    assert code == 0
    assert "world 64: pp=2 x dp_shard=8 x tp=4" in out
    assert "6 attention heads per rank" in out  # 24 heads / tp 4
    total = float(re.search(r"total\s+([\d.]+)", out).group(1))
    assert total > 0
    assert not dist.is_initialized()  # the fake process group is gone again


def test_meta_shards_divide_the_model():
    cfg = load_config("debug", ["--model.preset=2b", "--parallel.tp=4", "--data.text_tokens=16"])
    dims = ParallelDims.from_config(cfg.parallel, 32, cfg.model)  # tp 4 x dp_shard 8
    local, full = _meta_local_params(cfg, dims)
    assert sum(full.values()) == cfg.model.num_params()
    qkv = "blocks.0.attn.qkv.weight"
    assert local[qkv] * 32 == full[qkv]  # FSDP over 8 x TP over 4
    assert local["t_block.1.weight"] * 8 == full["t_block.1.weight"]  # not tensor parallel: FSDP only


def test_dry_run_rejects_a_layout_the_heads_cannot_take(capsys):
    code = main(["train", "--config", "debug", "--dry-run", "--world-size", "8", "--parallel.tp=8"])
    assert code == 2
    assert "num_heads = 4 must be divisible by parallel.tp x ulysses" in capsys.readouterr().err
