"""N-rank vs 1-rank parity on gloo (CPU) for every parallel axis and their combinations, and
distributed checkpoints that reshard (saved at 4 ranks, loaded at 2 and at 1).

Two spawns in all (4 ranks, then 2 ranks) run every scenario on one process group each.
Tolerances (fp32, relative error max |a - b| / max |b| per tensor): the loss of every step and
every gradient tensor of the first step within 1e-5; the gradients of the last step and the
weights after it within 1e-4 (they follow the AdamW trajectory, and Adam divides by sqrt(v),
which magnifies reduction-order noise in the few elements whose gradient is ~0).
"""

from __future__ import annotations

import dist_scenarios as sc
import pytest
import sharded_strategy_scenarios as ss
import torch
from dist_harness import run_once, run_scenarios
from safetensors.torch import load_file

from mugv.config import ConfigError, ParallelConfig
from mugv.distributed.parallel_dims import ParallelDims
from mugv.distributed.tensor_parallel import from_rank_blocks, to_rank_blocks
from mugv.models.dit.config import DiTConfig

STEPS = 3
CKPT_STEPS = 2  # steps before the checkpoint, and after it

FOUR_RANK = {
    "dp_replicate=2 x dp_shard=2": {"dp_replicate": 2, "dp_shard": 2},
    "dp_shard=2 x tp=2": {"dp_shard": 2, "tp": 2},
    "dp_shard=2 x cp=2 (ulysses), full AC": {"dp_shard": 2, "cp": 2, "activation_checkpointing": "full"},
    "tp=2 x cp=2 (ulysses), selective AC": {"dp_shard": 1, "tp": 2, "cp": 2, "activation_checkpointing": "selective"},
    "cp=4 (ulysses=2 x ring=2)": {"dp_shard": 1, "cp": 4, "cp_ring": 2},
}
FOUR_RANK_PIPELINE = {
    "pp=2 (1f1b) x dp_shard=2": ({"pp": 2, "dp_shard": 2}, 2),
    "pp=2 (1f1b) x tp=2": ({"pp": 2, "dp_shard": 1, "tp": 2}, 2),
}
TWO_RANK_PIPELINE = {
    "pp=2 (1f1b)": ({"pp": 2, "dp_shard": 1}, 2),
    "pp=2 (interleaved 1f1b, 2 stages per rank)": (
        {"pp": 2, "dp_shard": 1, "pp_schedule": "interleaved_1f1b", "pp_stages_per_rank": 2}, 4),
}
TWO_RANK = {
    "dp_shard=2": {"dp_shard": 2},
    "tp=2": {"dp_shard": 1, "tp": 2},
    "cp=2 (ulysses)": {"dp_shard": 1, "cp": 2},
    "cp=2 (ring)": {"dp_shard": 1, "cp": 2, "cp_ring": 2},
}
SAVE_LAYOUT = {"dp_shard": 2, "tp": 2}
LOAD_LAYOUT = {"dp_shard": 1, "cp": 2}

def _first_and_last(run: dict, first: int = 0) -> dict:
    return {**run, "losses": run["losses"][first:], "grads": [run["grads"][first], run["grads"][-1]]}


@pytest.fixture(scope="module")
def reference():
    return _first_and_last(sc.reference_run(STEPS))


@pytest.fixture(scope="module")
def deep_reference():  # depth 4, for the interleaved pipeline (4 stages)
    return _first_and_last(sc.reference_run(STEPS, sc.model_config(depth=4)))


@pytest.fixture(scope="module")
def checkpoint_reference():
    ref = _first_and_last(sc.reference_run(2 * CKPT_STEPS), first=CKPT_STEPS)
    return {**ref, "at_save": sc.reference_run(CKPT_STEPS)["weights"]}


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    def run(root):
        scenarios = [(name, sc.parity, {"parallel": p, "steps": STEPS}) for name, p in FOUR_RANK.items()]
        scenarios += [(name, sc.parity_pipeline, {"parallel": p, "steps": STEPS, "depth": depth})
                      for name, (p, depth) in FOUR_RANK_PIPELINE.items()]
        scenarios.append(("trainer", sc.trainer_resume, {"parallel": {"pp": 2, "dp_shard": 2},
                                                         "run_dir": str(root / "runs4")}))
        scenarios.append(("save", sc.save_and_continue, {"parallel": SAVE_LAYOUT, "ckpt_dir": str(root),
                                                         "export": str(root / "export.safetensors"),
                                                         "steps": CKPT_STEPS}))
        scenarios.append(("ema", ss.ema_parity, {"parallel": SAVE_LAYOUT, "snapshot_dir": str(root / "snapshots")}))
        scenarios.append(("lora", ss.lora_parity, {"parallel": SAVE_LAYOUT}))
        scenarios.append(("adamw", sc.adamw_implementations, {"parallel": SAVE_LAYOUT}))
        return run_scenarios(4, scenarios)

    return run_once(tmp_path_factory, "parallel-4-ranks", run)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, four_ranks):
    results4, root = four_ranks

    def run(_):  # writes beside the 4-rank runs, whose checkpoints it resumes
        from mugv.train.trainer import Trainer

        Trainer(sc.trainer_config(str(root / "runs1"), "single", 4, {})).fit()  # its step-2 checkpoint resumes at 2 ranks
        scenarios = [(name, sc.parity, {"parallel": p, "steps": STEPS}) for name, p in TWO_RANK.items()]
        scenarios += [(name, sc.parity_pipeline, {"parallel": p, "steps": STEPS, "depth": depth})
                      for name, (p, depth) in TWO_RANK_PIPELINE.items()]
        scenarios.append(("trainer", sc.trainer_resume, {"parallel": {"dp_shard": 1, "tp": 2},
                                                         "run_dir": str(root / "runs2")}))
        scenarios.append(("trainer from 4 ranks", sc.trainer_resume_from, {
            "parallel": {"dp_shard": 2}, "run_dir": str(root / "runs2"),
            "checkpoint": str(root / "runs4" / "straight" / "checkpoints" / "step_00000002")}))
        scenarios.append(("trainer from 1 rank", sc.trainer_resume_from, {
            "parallel": {"dp_shard": 1, "tp": 2}, "run_dir": str(root / "runs2"), "name": "from-one-rank",
            "checkpoint": str(root / "runs1" / "single" / "checkpoints" / "step_00000002")}))
        scenarios.append(("adamw", sc.adamw_implementations, {"parallel": {"dp_shard": 2}}))
        scenarios.append(("pipeline holdings", sc.pipeline_holdings, {"parallel": {"pp": 2, "dp_shard": 1},
                                                                      "run_dir": str(root / "runs2")}))
        scenarios.append(("bf16", sc.parity, {"parallel": {"dp_shard": 2, "param_dtype": "bf16",
                                                           "reduce_dtype": "bf16"}, "steps": STEPS}))
        status, saved = results4["save"]
        if status == "ok":
            scenarios.append(("load", sc.load_and_continue, {"parallel": LOAD_LAYOUT, "ckpt": saved["path"],
                                                             "steps": CKPT_STEPS}))
        return run_scenarios(2, scenarios)

    return run_once(tmp_path_factory, "parallel-2-ranks", run)[0]


def _ok(results, name):
    status, value = results[name]
    assert status == "ok", value
    return value


def _check(result, reference, label, trajectory=False):
    err = sc.max_relative_error(result, reference)
    print(f"parity | {label} | loss {err['loss']:.2e} | grad {err['grad']:.2e} | "
          f"grad (last step) {err['grad_last']:.2e} | weight {err['weight']:.2e}")
    # after a checkpoint every gradient already follows two AdamW updates
    assert err["loss"] < 1e-5 and err["grad"] < (1e-4 if trajectory else 1e-5), (label, err)
    assert err["grad_last"] < 1e-4 and err["weight"] < 1e-4, (label, err)


@pytest.mark.parametrize("name", list(FOUR_RANK))
def test_four_rank_parity(four_ranks, reference, name):
    _check(_ok(four_ranks[0], name), reference, f"{name} | 4 ranks")


@pytest.mark.parametrize("name", list(TWO_RANK))
def test_two_rank_parity(two_ranks, reference, name):
    _check(_ok(two_ranks, name), reference, f"{name} | 2 ranks")


@pytest.mark.parametrize("name", list(FOUR_RANK_PIPELINE))
def test_four_rank_pipeline_parity(four_ranks, reference, name):
    _check(_ok(four_ranks[0], name), reference, f"{name} | 4 ranks")


@pytest.mark.parametrize("name", list(TWO_RANK_PIPELINE))
def test_two_rank_pipeline_parity(two_ranks, reference, deep_reference, name):
    depth = TWO_RANK_PIPELINE[name][1]
    _check(_ok(two_ranks, name), reference if depth == 2 else deep_reference, f"{name} | 2 ranks")


def test_checkpoint_saved_at_4_ranks_continues_identically_at_4_2_and_1(four_ranks, two_ranks, checkpoint_reference):
    results4, _ = four_ranks
    at4 = _ok(results4, "save")
    at2 = _ok(two_ranks, "load")
    at1 = sc.load_and_continue_single(at4["path"], steps=CKPT_STEPS)
    for label, result in (("4 ranks dp_shard=2 x tp=2", at4), ("2 ranks cp=2", at2), ("1 rank", at1)):
        _check(result, checkpoint_reference, f"reshard | {label}", trajectory=True)
    # the three continuations agree with each other much more closely than with the reference
    assert at2["losses"] == pytest.approx(at4["losses"], rel=1e-6)
    assert at1["losses"] == pytest.approx(at2["losses"], rel=1e-6)


@pytest.fixture(scope="module")
def single_process_trainer(tmp_path_factory):
    from mugv.train.trainer import Trainer

    return Trainer(sc.trainer_config(str(tmp_path_factory.mktemp("single")), "single", 4, {})).fit()


def test_trainer_with_tensor_parallel_matches_the_single_process_trainer(two_ranks, single_process_trainer):
    """`Trainer` under a 2-rank process group (torchrun-style environment) with tp = 2 logs the
    single-process run's losses and gradient norms, and resumes exactly from its DCP checkpoint."""
    result = _ok(two_ranks, "trainer")
    single = [m["loss"] for m in single_process_trainer]
    assert result["straight"] == pytest.approx(single, rel=1e-5)
    assert result["grad_norms"][0] == pytest.approx([m["grad_norm"] for m in single_process_trainer], rel=1e-5)
    assert result["resumed"] == result["straight"][2:]  # stopped after step 2's checkpoint
    assert result["position"] == 4 * 2  # 4 steps x batch 2, one data-parallel rank


def test_trainer_with_pipeline_and_fsdp_resumes_exactly(four_ranks, two_ranks):
    """`Trainer` with pp = 2 (1F1B) x dp_shard = 2: DCP checkpoints of pipeline stages resume
    exactly, and continue the same at 2 ranks without a pipeline (dp_shard = 2)."""
    result = _ok(four_ranks[0], "trainer")
    assert len(result["straight"]) == 4 and result["resumed"] == result["straight"][2:]
    assert result["grad_norms"][1] == result["grad_norms"][0][2:]
    assert result["position"] == 4 * 2 * 2  # 4 steps x batch 2 x 2 data-parallel ranks
    elsewhere = _ok(two_ranks, "trainer from 4 ranks")["losses"]
    assert elsewhere == pytest.approx(result["straight"][2:], rel=1e-5)


def test_single_process_trainer_resumes_a_tensor_parallel_checkpoint(four_ranks, two_ranks, tmp_path):
    """The plain single-process `Trainer` resumes the 2-rank tp = 2 run's DCP checkpoint and
    logs the same steps 3 and 4."""
    from mugv.train.trainer import Trainer

    _, root = four_ranks
    straight = _ok(two_ranks, "trainer")["straight"]
    cfg = sc.trainer_config(str(tmp_path), "single", 4, {})
    cfg.checkpoint.resume = str(root / "runs2" / "straight" / "checkpoints" / "step_00000002")
    trainer = Trainer(cfg)
    losses = [m["loss"] for m in trainer.fit()]
    assert trainer.runtime.world_size == 1 and losses == pytest.approx(straight[2:], rel=1e-5)


def test_a_single_process_checkpoint_resumes_at_two_ranks(two_ranks, single_process_trainer):
    """One checkpoint format at every world size: the single-process `Trainer`'s step-2
    checkpoint, resumed by a 2-rank tp = 2 `Trainer` (rows resharded), logs the single process's
    steps 3 and 4 (one data-parallel rank on both sides, so the noise stream continues exactly)."""
    losses = _ok(two_ranks, "trainer from 1 rank")["losses"]
    assert losses == pytest.approx([m["loss"] for m in single_process_trainer][2:], rel=1e-5)


def test_fsdp_bf16_mixed_precision_keeps_fp32_master_weights(two_ranks, reference):
    result = _ok(two_ranks, "bf16")
    assert result["losses"] == pytest.approx(reference["losses"], rel=2e-2)
    assert sc.max_relative_error(result, reference)["loss"] > 1e-6  # it really computed in bf16
    assert all(w.dtype == torch.float32 for n, w in result["weights"].items())


def test_data_parallel_ranks_draw_disjoint_samples():
    from mugv.config import load_config
    from mugv.data.synthetic import SyntheticLatents
    from mugv.distributed.data import build_dp_data_source

    cfg = load_config("debug", ["--data.num_samples=64"])
    single = SyntheticLatents(cfg.data, cfg.model.in_channels, cfg.model.text_dim, seed=cfg.train.seed)
    global_batches = [single.next_batch().latents for _ in range(2)]  # batch 2: two steps of 2 dp ranks
    ranks = [build_dp_data_source(cfg, r, 2) for r in range(2)]
    step0 = [src.next_batch().latents for src in ranks]
    assert torch.equal(torch.cat(step0), torch.cat(global_batches))  # rank 0: samples 0-1, rank 1: 2-3
    assert ranks[0].state_dict() == ranks[1].state_dict() == {"position": 4}


def test_exported_safetensors_hold_the_original_mugv_layout(four_ranks, checkpoint_reference):
    """The export written at 4 ranks (tp = 2: permuted qkv / kv rows) equals, tensor for tensor,
    the checkpoint loaded into a plain model, and matches the single-process weights."""
    from mugv.distributed.checkpoint import load_distributed

    results4, root = four_ranks
    exported = load_file(root / "export.safetensors")
    plain = sc.make_model(sc.model_config())
    load_distributed(sc.Path(_ok(results4, "save")["path"]), plain, None)
    for name, tensor in plain.state_dict().items():
        if name in exported:
            assert torch.equal(exported[name], tensor), name
    assert "blocks.0.attn.qkv.weight" in exported and "blocks.1.cross_attn.kv_linear.bias" in exported
    for name, tensor in checkpoint_reference["at_save"].items():
        if name in exported:
            assert sc.relative_error(exported[name], tensor) < 1e-4, name


def test_ema_and_lora_on_fsdp_x_tp_shards_match_one_process(four_ranks, tmp_path):
    """dp_shard = 2 x tp = 2: the averages are 2-D DTensors (fused qkv / kv rows in rank blocks)
    updated shard by shard; LoRA factors are split with their tensor-parallel layer."""
    results4, root = four_ranks
    ema = _ok(results4, "ema")
    reference = ss.ema_reference(str(tmp_path / "snapshots"))
    assert ema["local_fraction"] < 0.4  # blocks split 4 ways, the rest 2 ways
    for ours, theirs in [(ema["ema"], reference["ema"]), *zip(ema["power"], reference["power"], strict=True)]:
        assert max(sc.relative_error(ours[n], t) for n, t in theirs.items()) < 1e-4
    for name in sorted(p.name for p in (tmp_path / "snapshots").iterdir()):
        ours, theirs = load_file(root / "snapshots" / name), load_file(tmp_path / "snapshots" / name)
        assert max(sc.relative_error(ours[n], t) for n, t in theirs.items()) < 1e-4, name

    lora = _ok(results4, "lora")
    reference = ss.lora_reference()
    err = sc.max_relative_error(lora, _first_and_last(reference))
    assert err["loss"] < 1e-5 and err["grad"] < 1e-5, err
    assert lora["lora_sharded"] and lora["optimized"]
    assert all(n.endswith((".lora_A", ".lora_B")) for n in lora["optimized"])  # the optimizer holds LoRA only
    assert max(sc.relative_error(lora["lora"][n], t) for n, t in reference["lora"].items()) < ss.LORA_TOLERANCE


def test_rank_blocks_put_q_k_v_of_one_rank_together():
    rows = torch.arange(12).float()[:, None]  # q = 0..3, k = 4..7, v = 8..11 (4 heads of dim 1)
    blocked = to_rank_blocks(rows, parts=3, tp=2)
    assert blocked[:6, 0].tolist() == [0, 1, 4, 5, 8, 9]  # rank 0: q, k, v of heads 0-1
    assert blocked[6:, 0].tolist() == [2, 3, 6, 7, 10, 11]
    assert torch.equal(from_rank_blocks(blocked, 3, 2), rows)
    # a plain row split would give rank 0 all of q and half of k: silently wrong
    assert rows.chunk(2)[0][:, 0].tolist() == [0, 1, 2, 3, 4, 5]


def test_constraints_fail_with_a_clear_message():
    model = DiTConfig.from_preset("debug")  # 4 heads
    with pytest.raises(ConfigError, match=r"num_heads = 4 must be divisible by parallel.tp x ulysses"):
        ParallelDims.from_config(ParallelConfig(tp=2, cp=4, dp_shard=1), 8, model)
    ParallelDims.from_config(ParallelConfig(tp=2, cp=4, cp_ring=2, dp_shard=1), 8, model)  # ring takes the rest
    with pytest.raises(ConfigError, match=r"world size 6 is not divisible by .* = 4"):
        ParallelDims.from_config(ParallelConfig(tp=2, cp=2), 6, model)
    with pytest.raises(ConfigError, match=r"= 8 must equal the world size 4"):
        ParallelDims.from_config(ParallelConfig(dp_shard=2, tp=4), 4, model)
    with pytest.raises(ConfigError, match="parallel.cp_ring"):
        ParallelDims.from_config(ParallelConfig(cp=4, cp_ring=3), 4, model)
    with pytest.raises(ConfigError, match="cannot fill parallel.pp = 4"):
        ParallelDims.from_config(ParallelConfig(pp=4), 4, model)
    dims = ParallelDims.from_config(ParallelConfig(dp_replicate=2, tp=2, cp=2, pp=2), 32, DiTConfig.from_preset("10b"))
    assert dims.dp_shard == 2 and dims.coordinates(31) == {
        "tp": 1, "cp_ulysses": 1, "cp_ring": 0, "dp_shard": 1, "dp_replicate": 1, "pp": 1, "cp": 1, "dp": 3}


@pytest.mark.parametrize("ranks", [2, 4])
def test_adamw_takes_the_multi_tensor_path_per_mesh_and_matches_the_for_loop(four_ranks, two_ranks, ranks):
    """dp_shard = 2 (every parameter on the FSDP mesh: one group each for decayed and not) and
    dp_shard = 2 x tp = 2 (blocks on the 2-D mesh, embedders on the FSDP mesh: the groups split
    by mesh): multi-tensor AdamW, and the run matches the for-loop AdamW's to this module's
    trajectory tolerance (the first step's gradients are identical; the implementations round
    differently, which the later gradients and the weights carry, as Adam's 1/sqrt(v) magnifies)."""
    result = _ok(four_ranks[0] if ranks == 4 else two_ranks, "adamw")
    meshes = {names for names, _, _ in result["groups"]}
    assert result["one_mesh"] and all(foreach for _, _, foreach in result["groups"])
    if ranks == 2:
        assert meshes == {("dp_shard_cp",)} and len(result["groups"]) == 2
    else:
        assert len(meshes) == 2 and len(result["groups"]) == 4
    err = sc.max_relative_error(result["multi_tensor"], result["for_loop"])
    assert err["grad"] == 0.0 and err["loss"] < 1e-5 and err["grad_last"] < 1e-4 and err["weight"] < 1e-4, err


def test_a_pipeline_rank_frees_the_other_stages(two_ranks):
    """pp = 2 over the 2-block debug model: rank 0 holds block 0, the patch embedding and the
    start / end tokens, rank 1 block 1 and the final layer, both the conditioning embedders; the
    rest of the model is on the meta device (names and shapes kept, no memory)."""
    first, last = _ok(two_ranks, "pipeline holdings")["ranks"]
    conditioning = ("t_embedder.", "fps_embedder.", "t_block.", "y_embedder.")
    for rank, own, other in ((first, ("blocks.0.", "x_embedder.", "start_token", "end_token"), ("blocks.1.", "final_layer.")),
                             (last, ("blocks.1.", "final_layer."), ("blocks.0.", "x_embedder.", "start_token"))):
        held = rank["held"]
        assert any(n.startswith(conditioning) for n in held)
        assert all(any(n.startswith(prefix) for n in held) for prefix in own), held
        assert not any(n.startswith(other) for n in held), held
        assert rank["held_elements"] < 0.8 * rank["elements"]
