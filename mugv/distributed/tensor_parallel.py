"""Tensor parallel (Megatron-style, on DTensor) with sequence parallel for MUG-DiT blocks.

Per block: qkv, cross-attention q and kv, and fc1 are column-parallel (output features split by
head / hidden unit); both attention projections and fc2 are row-parallel. Between them the
activations are sequence-parallel: each tp rank holds a slice of the tokens for the norms,
modulation and residuals; a column-parallel layer all-gathers the sequence and a row-parallel
layer reduce-scatters back to it. The text keys are whole on every rank.

Fused projections by heads. `qkv.weight` is laid out [q all heads; k all heads; v all heads] and
`kv_linear.weight` [k all; v all]: a plain row split would hand rank 0 all of q and half of k.
Before sharding, their rows (and bias) are permuted into rank blocks [q_0; k_0; v_0; q_1; ...],
so the local shard of rank r is [q_r; k_r; v_r], which the model's view(..., 3, heads, head_dim)
reads correctly. `HEAD_BLOCKED_ATTR` records the permutation on the module; checkpoints
(mugv.distributed.checkpoint) undo it, so saved tensors always hold the original layout.

LoRA factors (mugv.train.lora) on a sharded layer are split to match it: a column-parallel
layer's B by output rows (permuted with the layer's rows), A whole; a row-parallel layer's A by
input columns, B whole. So B A x comes out sharded (or partial) exactly like the layer's output.
"""

from __future__ import annotations

import torch
from torch import nn

from mugv.train.lora import LORA_FACTORS

HEAD_BLOCKED_ATTR = "_mugv_rank_blocks"  # (parts, tp) on a Linear whose rows were permuted
OUTPUT_ROWS = ("weight", "bias", LORA_FACTORS[1])  # a Linear's tensors whose rows are its output features


def to_rank_blocks(t: torch.Tensor, parts: int, tp: int) -> torch.Tensor:
    """Rows [p0 all; p1 all; ...] -> [p0_r0; p1_r0; ...; p0_r1; p1_r1; ...] (each p split in tp)."""
    rows = t.shape[0]
    return t.reshape(parts, tp, rows // (parts * tp), *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def from_rank_blocks(t: torch.Tensor, parts: int, tp: int) -> torch.Tensor:
    rows = t.shape[0]
    return t.reshape(tp, parts, rows // (parts * tp), *t.shape[1:]).transpose(0, 1).reshape(t.shape)


@torch.no_grad()
def _block_rows(linear: nn.Linear, parts: int, tp: int) -> None:
    for name in OUTPUT_ROWS:
        param = getattr(linear, name, None)
        if param is not None:
            param.copy_(to_rank_blocks(param, parts, tp))
    setattr(linear, HEAD_BLOCKED_ATTR, (parts, tp))


def _shard_lora_factors(linear: nn.Module, tp_mesh, column: bool) -> None:
    """Place a sharded layer's LoRA factors (see the module docstring); the TP styles shard
    every parameter of a column-parallel layer by rows and leave a row-parallel one's extras."""
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    a_name, b_name = LORA_FACTORS
    placements = {a_name: Replicate() if column else Shard(1), b_name: Shard(0) if column else Replicate()}
    for name, placement in placements.items():
        param = getattr(linear, name)
        value = param.full_tensor() if isinstance(param, DTensor) else param
        linear.register_parameter(name, nn.Parameter(distribute_tensor(value.detach(), tp_mesh, [placement]),
                                                     requires_grad=param.requires_grad))


def apply_tensor_parallel(blocks, tp_mesh) -> None:
    """Shard every block of `blocks` over `tp_mesh` (1-D) with sequence parallel activations."""
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    tp = tp_mesh.size()
    for block in blocks:
        _block_rows(block.attn.qkv, 3, tp)
        _block_rows(block.cross_attn.kv_linear, 2, tp)
        plan = {
            "attn.qkv": ColwiseParallel(input_layouts=Shard(1)),
            "attn.proj": RowwiseParallel(output_layouts=Shard(1)),
            "cross_attn.q_linear": ColwiseParallel(input_layouts=Shard(1)),
            "cross_attn.kv_linear": ColwiseParallel(),
            "cross_attn.proj": RowwiseParallel(output_layouts=Shard(1)),
            "mlp.fc1": ColwiseParallel(input_layouts=Shard(1)),
            "mlp.fc2": RowwiseParallel(output_layouts=Shard(1)),
        }
        parallelize_module(block, tp_mesh, plan)
        for path, style in plan.items():
            linear = block.get_submodule(path)
            if hasattr(linear, LORA_FACTORS[0]):
                _shard_lora_factors(linear, tp_mesh, column=isinstance(style, ColwiseParallel))


def head_blocked_parameters(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{parameter name: (parts, tp)} of every parameter stored in rank-block row order."""
    found = {}
    for name, module in model.named_modules():
        blocks = getattr(module, HEAD_BLOCKED_ATTR, None)
        if blocks is not None:
            for pname, _ in module.named_parameters(recurse=False):
                if pname in OUTPUT_ROWS:
                    found[f"{name}.{pname}" if name else pname] = blocks
    return found
