"""Start-up on the meta device (gloo, 2 ranks): only rank 0 builds the model with its values; the
other rank lays it out on the meta device and receives its shard, and every rank starts from the
weights, buffers and generator state of the single-process `Trainer`, bit for bit."""

from __future__ import annotations

import dist_scenarios as sc
import meta_init_scenarios as mi
import pytest
import sharded_strategy_scenarios as ss
import torch
from dist_harness import run_once, run_scenarios

from mugv.distributed.checkpoint import model_tensors

LAYOUTS = {
    "dp_shard=2, EMA, init_weights": ({"dp_shard": 2}, ("--ema.decay=0.9", f"--checkpoint.init_weights={ss.GOLDEN}")),
    "tp=2, LoRA": ({"dp_shard": 1, "tp": 2}, ss.LORA_OVERRIDES),
    "pp=2": ({"pp": 2, "dp_shard": 1}, ()),
}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    def run(root):
        return run_scenarios(2, [(name, mi.trainer_start, {"parallel": parallel, "run_dir": str(root), "extra": extra})
                                 for name, (parallel, extra) in LAYOUTS.items()]
                             + [(f"frozen copy, offload {offload}", mi.frozen_copy_start,
                                 {"run_dir": str(root), "offload": offload}) for offload in (False, True)])

    return run_once(tmp_path_factory, "meta-init-2-ranks", run)[0]


def _single(tmp_path, extra) -> tuple[dict, object]:
    from mugv.train.trainer import Trainer

    trainer = Trainer(sc.trainer_config(str(tmp_path), "single", 1, {}, extra))
    rng = torch.random.get_rng_state()
    return {n: t.detach().clone() for n, t in model_tensors(trainer.model).items()}, (trainer, rng)


def _ok(results, name):
    status, value = results[name]
    assert status == "ok", value
    return value


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_only_rank_0_builds_the_model_and_every_rank_starts_from_the_single_process_weights(two_ranks, tmp_path, name):
    result = _ok(two_ranks, name)
    single, (trainer, rng) = _single(tmp_path, LAYOUTS[name][1])
    first, second = result["ranks"]
    assert second["real_elements"] == 0 and first["real_elements"] == 0  # all meta until parallelized
    for rank in (first, second):
        assert rank["meta_left"] == []  # every kept parameter and buffer has memory and a value
        assert torch.equal(rank["rng"], rng)  # the global generator continues as in one process
        for n, tensor in rank["weights"].items():
            assert torch.equal(tensor, single[n]), n  # bit-identical, buffers included
    assert set(first["weights"]) | set(second["weights"]) == set(single)
    if "--ema.decay=0.9" in LAYOUTS[name][1]:  # the averages start from the filled weights
        assert set(result["ema"]) == set(trainer.ema.state_dict())
        assert all(torch.equal(v, single[n]) for n, v in result["ema"].items())


def test_fsdp_ranks_hold_half_of_every_parameter(two_ranks):
    first, second = _ok(two_ranks, "dp_shard=2, EMA, init_weights")["ranks"]
    for n, full in first["full"].items():
        assert first["local"][n] + second["local"][n] == full, n
        assert second["local"][n] <= first["local"][n] == -(-full // 2), n  # torch.chunk: rank 0 takes the ceil


def test_pipeline_ranks_materialise_only_their_own_stages(two_ranks):
    first, second = _ok(two_ranks, "pp=2")["ranks"]
    conditioning = ("t_embedder.", "fps_embedder.", "t_block.", "y_embedder.")
    first_stage, last_stage = ("blocks.0.", "x_embedder.", "start_token", "end_token"), ("blocks.1.", "final_layer.")
    for rank, own, other in ((first, first_stage, last_stage), (second, last_stage, first_stage)):
        for names in (rank["held"], list(rank["weights"])):
            assert any(n.startswith(conditioning) for n in names)
            assert all(any(n.startswith(prefix) for n in names) for prefix in own), names
            assert not any(n.startswith(other) for n in names), names


@pytest.mark.parametrize("offload", [False, True])
def test_a_frozen_reference_copy_is_filled_like_the_model(two_ranks, tmp_path, offload):
    result = _ok(two_ranks, f"frozen copy, offload {offload}")
    single = mi.frozen_copy_start(0, 1, str(tmp_path), offload)["weights"]
    assert set(result["weights"]) == set(single)
    for n, tensor in result["weights"].items():
        assert torch.equal(tensor, single[n]), n
    assert result["offloaded"] is offload  # FSDP2 keeps the offloaded copy's shards in CPU memory
