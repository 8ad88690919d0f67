"""Compile compiles each block under every activation-checkpointing mode, and gradients match eager."""

import pytest
import torch

from mugv.config import ParallelConfig
from mugv.distributed.parallelize import apply_block_transforms
from mugv.models.dit.config import DiTConfig
from mugv.models.dit.model import MUGDiT


def model_and_inputs():
    torch.manual_seed(0)
    model = MUGDiT(DiTConfig.from_preset("debug"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 24, 2, 4, 4, generator=gen)
    text = torch.randn(1, 3, 64, generator=gen)
    kwargs = dict(fps=torch.tensor([24.0]), text_mask=torch.ones(1, 3, dtype=torch.bool),
                  frame_mask=torch.tensor([[False, True]]))
    return model, (x, torch.tensor([700.0]), text), kwargs


def loss_and_grads(model, args, kwargs):
    model.zero_grad()
    loss = model(*args, **kwargs).square().mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("mode", ["none", "full", "selective", "attention"])
def test_every_checkpointing_mode_compiles_the_blocks(mode, monkeypatch):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    real_compile = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: real_compile(self, backend=counter, **kw))

    model, args, kwargs = model_and_inputs()
    eager_loss, eager_grads = loss_and_grads(model, args, kwargs)
    apply_block_transforms(list(model.blocks), ParallelConfig(activation_checkpointing=mode, compile=True))
    loss, grads = loss_and_grads(model, args, kwargs)

    assert counter.frame_count >= 1, f"activation_checkpointing={mode}: no frame was compiled"
    # The block's body is in the graph (inside the checkpoint's subgraph when checkpointing).
    traced_calls = sum(
        node.op == "call_function" for graph in counter.graphs for module in graph.modules()
        if isinstance(module, torch.fx.GraphModule) for node in module.graph.nodes
    )
    assert traced_calls > 20
    checkpointed = any("checkpoint" in str(node.target) for graph in counter.graphs for node in graph.graph.nodes)
    assert checkpointed == (mode != "none")
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=0)
    for grad, eager in zip(grads, eager_grads):
        torch.testing.assert_close(grad, eager, rtol=1e-4, atol=1e-4 * eager.abs().max().item() + 1e-12)


@pytest.mark.parametrize("mode, recomputed", [("full", True), ("attention", False), ("none", False)])
def test_attention_checkpointing_does_not_recompute_attention(mode, recomputed):
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountAttention(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "scaled_dot_product" in func.__name__ and "backward" not in func.__name__:
                CountAttention.calls += 1
            return func(*args, **(kwargs or {}))

    model, args, kwargs = model_and_inputs()
    apply_block_transforms(list(model.blocks), ParallelConfig(activation_checkpointing=mode))
    loss = model(*args, **kwargs).square().mean()
    with CountAttention():
        loss.backward()
    assert (CountAttention.calls > 0) == recomputed
