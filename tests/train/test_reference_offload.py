"""`preference.reference_offload`: the frozen copy's block weights stay in CPU memory and each
block's weights are copied to the device for its forward (on this CPU-only machine the device is
the CPU too, so the test checks where the weights live and that they are copies, streamed in and
dropped, and that the numbers are those of the copy kept on the device). The sharded path (FSDP2's
CPUOffloadPolicy) is in tests/distributed/test_preference_parity.py."""

import pytest
import torch

from mugv.config import ConfigError
from mugv.train.objectives import FlowDPOObjective, ReferenceMode, build_reference

from numerics_testing import assert_close_to_scale

from test_preference import grads_and_loss, objective, preference_trainer, setup


def block_bytes(block):
    return sum(p.numel() * p.element_size() for p in block.parameters())


def test_an_offloaded_copy_streams_each_block_in_and_computes_like_the_copy_on_the_device():
    cfg, model, source, _ = setup(lora=False)
    kept = build_reference(ReferenceMode.FROZEN_COPY, model)
    offloaded = build_reference(ReferenceMode.FROZEN_COPY, model, offload=True)
    offloaded.stream_blocks(torch.device("cpu"))
    blocks = list(offloaded.module.blocks)
    host = {id(p): p.data.data_ptr() for block in blocks for p in block.parameters()}
    seen = []  # per block forward: whether every weight was a copy, not the CPU-memory tensor
    for block in blocks:  # registered after the streamer's hooks: sees the block as its forward does
        block.register_forward_pre_hook(lambda m, args: seen.append(
            all(p.data.data_ptr() != host[id(p)] for p in m.parameters())))

    obj = objective(FlowDPOObjective, cfg, ReferenceMode.FROZEN_COPY, beta=200.0)
    batch = source.next_batch()
    want, want_grads = grads_and_loss(model, obj, batch, kept)
    got, got_grads = grads_and_loss(model, obj, batch, offloaded)

    assert_close_to_scale(got.loss, want.loss)
    for name, grad in want_grads.items():
        assert_close_to_scale(got_grads[name], grad)
    assert got.metrics["e_ref_chosen"] == pytest.approx(want.metrics["e_ref_chosen"], rel=1e-6)
    assert seen == [True] * len(blocks)
    # after the forward: the weights are the CPU-memory ones again, none left on the device, and at
    # most two blocks' (the running one and the prefetched next) were there at once
    assert all(p.data.data_ptr() == host[id(p)] and p.device.type == "cpu" for b in blocks for p in b.parameters())
    assert offloaded.streamer.resident_bytes == 0
    assert offloaded.streamer.peak_resident_bytes == block_bytes(blocks[0]) + block_bytes(blocks[1])
    assert not any(p.requires_grad for p in offloaded.module.parameters())


def test_the_trainer_offloads_the_frozen_copy_and_trains_as_without(tmp_path):
    runs = {}
    for offload in (False, True):
        trainer = preference_trainer(tmp_path / str(offload), "dpo", True, "--train.steps=2", "--optim.lr=1e-3",
                                     f"--preference.reference_offload={str(offload).lower()}")
        assert trainer.reference.separate and (trainer.reference.streamer is not None) == offload
        runs[offload] = [m["loss"] for m in trainer.fit()]
    assert_close_to_scale(runs[True], runs[False])


def test_offload_needs_a_frozen_copy(tmp_path):
    with pytest.raises(ConfigError, match="preference.reference_offload"):
        preference_trainer(tmp_path, "dpo", True, "--lora.rank=2", "--preference.reference_offload=true")
