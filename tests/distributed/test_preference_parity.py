"""Flow-DPO and Flow-KTO under FSDP2 on 2 gloo ranks (dp_shard = 2, each rank its pairs or
labelled samples of the global batch) against one process with the whole batch: the same loss
and KTO reference point every step, the same first-step gradients and the same weights after
the steps, with the LoRA adapters-off reference and with a frozen copy sharded like the model
(also with its shards in CPU memory: preference.reference_offload, FSDP2's CPUOffloadPolicy).
Tolerances: fp32 reduction order (tests/numerics_testing), relative to each tensor's scale."""

from __future__ import annotations

import preference_scenarios as ps
import pytest
import sharded_strategy_scenarios as ss
from dist_harness import run_once, run_scenarios

from numerics_testing import assert_close_to_scale

# (objective, reference, the frozen copy's shards offloaded to CPU memory)
RUNS = [("dpo", "adapters_off", False), ("dpo", "frozen_copy", False), ("kto", "adapters_off", False),
        ("kto", "frozen_copy", False), ("dpo", "frozen_copy", True)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    def run(root):
        return run_scenarios(2, [(f"{o} {r} {offload}", ps.preference_run,
                                  {"objective": o, "reference": r, "run_dir": str(root), "parallel": {"dp_shard": 2},
                                   "offload": offload})
                                 for o, r, offload in RUNS])

    return run_once(tmp_path_factory, "preference-2-ranks", run)[0]


@pytest.mark.parametrize("objective,reference,offload", RUNS)
def test_two_ranks_train_like_one(two_ranks, tmp_path, objective, reference, offload):
    status, ours = two_ranks[f"{objective} {reference} {offload}"]
    assert status == "ok", ours
    theirs = ps.preference_run(0, 1, objective, reference, str(tmp_path))  # the copy kept on the device
    assert ours["sharded"] and not theirs["sharded"]
    assert ours["reference_sharded"] == (reference == "frozen_copy")
    assert ours["reference_offloaded"] == offload

    def series(run, key):
        return [m[key] for m in run["history"]]

    # the losses pass the velocity errors' rounding on multiplied by beta: 1e-4
    for key in ("loss", "grad_norm"):
        assert_close_to_scale(series(ours, key), series(theirs, key), rel=1e-4)
    # the logged metrics are the global batch's too: means of errors, and rewards (differences of
    # errors, times beta) to the scale of the errors they are made of
    errors = series(theirs, "e_ref_chosen")
    for key in ("e_theta_chosen", "e_theta_rejected", "e_ref_chosen", "e_ref_rejected", "kl"):
        assert_close_to_scale(series(ours, key), series(theirs, key))
    assert_close_to_scale(series(ours, "reward_margin"), series(theirs, "reward_margin"),
                          scale=[500 * e for e in errors])
    assert max(abs(m) for m in series(theirs, "reward_margin")) > 1e-2  # the policy left its reference
    if objective == "kto":  # z, the mean reward of the global batch (both ranks'), a difference of errors
        assert max(series(theirs, "kto_z")) > 0
        assert_close_to_scale(series(ours, "kto_z"), series(theirs, "kto_z"), scale=errors)
    assert ours["grads"].keys() == theirs["grads"].keys()
    for name, grad in theirs["grads"].items():
        assert_close_to_scale(ours["grads"][name], grad, rel=1e-5)
    trained = {n for n in theirs["grads"]}
    assert trained and all(n.endswith((".lora_A", ".lora_B")) for n in trained) == (reference == "adapters_off")
    # Adam's first steps move an element by about lr whatever the size of its gradient, so one
    # whose gradient is at rounding level moves either way: 5e-4 of the scale; LoRA's B factors
    # start at zero, where that is most elements (ss.LORA_TOLERANCE)
    tolerance = ss.LORA_TOLERANCE if reference == "adapters_off" else 5e-4
    for name in trained:
        assert_close_to_scale(ours["weights"][name], theirs["weights"][name], rel=tolerance)
