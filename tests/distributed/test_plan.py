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


def plan_of(overrides, world=8, profile="debug"):
    from mugv.distributed.plan import format_plan

    return format_plan(load_config(profile, overrides), world)


def figure(text, label):
    return float(re.search(rf"{re.escape(label)}[^\d]*([\d.]+)", text).group(1))


def test_shard_profiles_plan_for_their_largest_stage_bucket():
    out = plan_of(["--data.source=shards", "--data.shards=/nonexistent", "--data.text_tokens=16",
                   '--stages=[{name="a", steps=1, buckets=["1x256x256", "17x256x448"]}]'])
    # 17 frames -> 3 latent frames; 256 x 448 -> 32 x 56 latents -> 16 x 28 patches
    assert "1346 tokens per sample (the largest stage bucket, 17x256x448)" in out


def test_without_buckets_or_an_index_the_sequence_is_reported_unknown():
    out = plan_of(["--data.source=shards", "--data.shards=/nonexistent"])
    assert "no readable shard index at data.shards = '/nonexistent'" in out
    assert figure(out, "activations (") == 0


def test_averages_and_overhead_are_counted_and_a_pipeline_rank_only_its_stage():
    size = ["--model.preset=2b", "--data.text_tokens=16"]
    plain = plan_of(size)
    with_ema = plan_of([*size, "--ema.decay=0.99", "--ema.power_sigma_rels=[0.05, 0.1]", "--ema.snapshot_every=10"])
    params = figure(plain, "parameters (fp32 master)")
    assert abs(figure(with_ema, "EMA / power-EMA averages (3)") - 3 * params) <= 0.015
    assert figure(plain, "fixed overhead") == 5.0
    piped = plan_of([*size, "--parallel.pp=2", "--parallel.pp_microbatches=2", "--data.batch_size=2"], world=2)
    assert "other stages' blocks" not in piped  # the trainer frees them (release_other_stages)
    whole = figure(plan_of(size, world=1), "parameters (fp32 master)")
    assert figure(piped, "parameters (fp32 master)") < 0.6 * whole


def test_a_plan_beyond_the_device_memory_warns():
    out = plan_of(["--model.preset=10b", "--data.text_tokens=16"], world=1)
    assert "WARNING" in out and "exceeds 80 GiB" in out


def test_start_up_holds_the_whole_model_on_rank_0_host_only():
    size = ["--model.preset=2b", "--data.text_tokens=16"]
    cfg = load_config("debug", size)
    whole_gib = cfg.model.num_params() * 4 / 2**30
    sharded = plan_of(size)
    assert "rank 0 builds the whole model in fp32 in host memory" in sharded
    assert "the others lay it out on the meta device" in sharded
    assert abs(figure(sharded, "in host memory,") - whole_gib) <= 0.01
    assert figure(sharded, "(largest") < 0.01 * whole_gib * 1024  # one tensor, in MiB
    assert abs(figure(plan_of(size, world=1), "builds the whole model in fp32,") - whole_gib) <= 0.01
