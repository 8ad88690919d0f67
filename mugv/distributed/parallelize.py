"""`parallelize_dit`: apply every parallelism to a plain single-device MUG-DiT, in a fixed order.

Order (as pytorch/torchtitan does it): tensor + sequence parallel, context parallel (the token
split declared by `MUGDiT.token_split_plan`, Ulysses / ring core attention), activation
checkpointing, per-block torch.compile, FSDP2 (per block, then the root) with mixed precision.
The model's parameter names never change, so state dicts keep the MUG-V layout names.

Gradient bookkeeping (see mugv.distributed.context_parallel): when the sequence is split, each
rank's gradients are partial sums over its tokens. FSDP2 shards over dp_shard x cp and divides
by the data-parallel degree only, so it sums over cp and averages over dp. Parameters that tensor
parallel does not shard see only their tp rank's tokens too; `finish_gradients` sums them over tp
(the text embedding gradient, which DTensor already reduces over tp in the column-parallel kv
projection, is pre-scaled by 1/tp so it follows the same rule).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from mugv.config import ParallelConfig
from mugv.distributed.context_parallel import (
    SequenceLayout,
    UlyssesRingAttention,
    gather_sequence,
    scale_grad,
    shard_inputs,
)
from mugv.distributed.parallel_dims import ParallelDims
from mugv.distributed.tensor_parallel import apply_tensor_parallel
from mugv.models.dit.model import MUGDiT

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class ParallelPlan:
    """What `parallelize_dit` did, for the training loop and checkpoints."""

    dims: ParallelDims
    mesh: object | None
    coords: dict[str, int]
    layout: SequenceLayout | None = None
    tp_sharded: set[str] = field(default_factory=set)  # parameter names tensor parallel shards
    fsdp: bool = False

    def group(self, name: str):
        return None if self.mesh is None else self.mesh[name].get_group()


def _install_sequence_split(model: nn.Module, blocks, plan: ParallelPlan, split_tokens: bool) -> None:
    """Split what `model.condition` returns (the tokens too when `split_tokens`; a later pipeline
    stage receives them split already), swap the blocks' core attention, gather the final layer."""
    dims, mesh, c = plan.dims, plan.mesh, plan.coords
    layout = SequenceLayout(cp=dims.cp, cp_rank=c["cp"], tp=dims.tp, tp_rank=c["tp"])
    plan.layout = layout
    split_plan = dict(MUGDiT.token_split_plan)
    if not split_tokens:
        split_plan.pop("tokens")
    condition = model.condition

    @functools.wraps(condition)
    def split_condition(*args, **kwargs):
        inputs = shard_inputs(condition(*args, **kwargs), layout, split_plan)
        if dims.tp > 1:  # the column-parallel kv projection already sums this gradient over tp
            inputs = inputs.replace(text=scale_grad(inputs.text, 1.0 / dims.tp))
        return inputs

    model.condition = split_condition  # instance attribute: `embed` and the stages call it
    if not hasattr(model, "final_layer"):
        _swap_attention(blocks, layout, dims, mesh)
        return
    gather_group = mesh["cp_tp"].get_group()
    # FSDP2 averages gradients over dp_shard x cp; each cp rank holds a partial sum over its
    # tokens, so the gradient is scaled by cp on its way back (the average then sums over cp).
    scale = float(dims.cp)
    model.final_layer.register_forward_hook(
        lambda module, args, out: gather_sequence(
            scale_grad(out, scale) if scale != 1 else out, MUGDiT.token_gather_dim, gather_group
        )
    )
    _swap_attention(blocks, layout, dims, mesh)


def _swap_attention(blocks, layout: SequenceLayout, dims: ParallelDims, mesh) -> None:
    ulysses = mesh["cp_ulysses"].get_group() if dims.cp_ulysses > 1 else None
    ring = mesh["cp_ring"].get_group() if dims.cp_ring > 1 else None
    attention = UlyssesRingAttention(layout, ulysses, ring)
    for block in blocks:
        block.attn.core_attention = attention


def _sdpa_ops() -> set:
    """Every fused SDPA kernel's op, cuDNN's included (recent CUDA builds pick it first on H100/H200)."""
    names = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu")
    return {getattr(torch.ops.aten, n).default for n in names if hasattr(torch.ops.aten, n)}


def _save_policy(keep: set):
    from torch.utils.checkpoint import CheckpointPolicy

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in keep else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


# What each selective mode keeps: `selective` every matmul and attention output (cheap
# recompute, but about 13 hidden-sized units per token per block); `attention` only the
# attention outputs, the most expensive op to redo (+1 unit per block), recomputing the rest.
SAVED_OPS = {
    "selective": lambda: _sdpa_ops() | {torch.ops.aten.mm.default, torch.ops.aten.addmm.default,
                                        torch.ops.aten.bmm.default},
    "attention": _sdpa_ops,
}


# Functions of ours around `checkpoint`, not partials of it: Dynamo skips frames that start in
# torch/utils/checkpoint.py, so a compiled block would otherwise run eagerly; from here it traces
# the checkpoint as a higher-order op with the block inside.
def _checkpoint_full(inner, *args, **kwargs):
    from torch.utils.checkpoint import checkpoint

    return checkpoint(inner, *args, use_reentrant=False, **kwargs)


def _selective_contexts(mode: str):
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_save_policy(SAVED_OPS[mode]()))


def _checkpoint_selective(inner, *args, **kwargs):
    from torch.utils.checkpoint import checkpoint

    return checkpoint(inner, *args, use_reentrant=False,
                      context_fn=functools.partial(_selective_contexts, "selective"), **kwargs)


def _checkpoint_attention(inner, *args, **kwargs):
    from torch.utils.checkpoint import checkpoint

    return checkpoint(inner, *args, use_reentrant=False,
                      context_fn=functools.partial(_selective_contexts, "attention"), **kwargs)


CHECKPOINT_WRAPPERS = {"full": _checkpoint_full, "selective": _checkpoint_selective,
                       "attention": _checkpoint_attention}


def apply_activation_checkpointing(blocks, mode: str) -> None:
    """Recompute each block in the backward: `full` keeps only its input; `selective` and
    `attention` also keep the outputs of SAVED_OPS[mode]. Parameter names are unchanged."""
    if mode == "none":
        return
    for block in blocks:
        block.forward = functools.partial(CHECKPOINT_WRAPPERS[mode], block.forward)


def apply_block_transforms(blocks, cfg: ParallelConfig) -> None:
    """Activation checkpointing, then compile, per block: the same in one process as under torchrun."""
    apply_activation_checkpointing(blocks, cfg.activation_checkpointing)
    if cfg.compile:
        for block in blocks:
            block.compile()


def apply_fsdp(model: nn.Module, blocks, plan: ParallelPlan, cfg: ParallelConfig, cpu_offload: bool = False) -> None:
    """FSDP2 per block, then the rest; `cpu_offload`: the shards live in CPU memory and each
    block's weights are copied to the device for its forward (CPUOffloadPolicy)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    dims, mesh = plan.dims, plan.mesh
    dp_mesh = mesh["dp_replicate", "dp_shard_cp"] if dims.dp_replicate > 1 else mesh["dp_shard_cp"]
    # The model casts its own inputs to the compute dtype; FSDP's input cast would also round the
    # raw timestep (0..1000) and the RoPE tables to bf16.
    mp = MixedPrecisionPolicy(param_dtype=DTYPES[cfg.param_dtype], reduce_dtype=DTYPES[cfg.reduce_dtype],
                              cast_forward_inputs=False)
    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cpu_offload else OffloadPolicy()
    for block in blocks:
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, offload_policy=offload)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, offload_policy=offload)
    plan.fsdp = True


def parallelize_dit(
    model: nn.Module,
    dims: ParallelDims,
    mesh,
    cfg: ParallelConfig,
    rank: int | None = None,
    *,
    blocks: list[nn.Module] | None = None,
    split_tokens: bool = True,
    cpu_offload: bool = False,
) -> ParallelPlan:
    """Apply TP/SP, CP, activation checkpointing, compile and FSDP2 to `model` in place.

    `model` is a MUGDiT, or a pipeline stage (mugv.distributed.pipeline.DiTStage) with its
    `blocks` and `split_tokens` = whether it embeds the tokens itself (the first stage).
    `cpu_offload`: FSDP2, when it shards, keeps the shards in CPU memory (a frozen reference copy).
    """
    rank = dist.get_rank() if rank is None else rank
    plan = ParallelPlan(dims=dims, mesh=mesh, coords=dims.coordinates(rank))
    dims.validate(model.cfg)
    blocks = list(model.blocks) if blocks is None else blocks
    if dims.tp > 1:
        apply_tensor_parallel(blocks, mesh["tp"])
        from torch.distributed.tensor import DTensor

        plan.tp_sharded = {n for n, p in model.named_parameters() if isinstance(p, DTensor)}
    if dims.sequence_split > 1:
        _install_sequence_split(model, blocks, plan, split_tokens)
    apply_block_transforms(blocks, cfg)
    if dims.fsdp_enabled:
        apply_fsdp(model, blocks, plan, cfg, cpu_offload)
    return plan


# Each model family's parallelize function, by the family name of mugv.models.registry.
def one_process_only(model: nn.Module, dims: ParallelDims, mesh, cfg: ParallelConfig, rank: int | None = None,
                     **_) -> ParallelPlan:
    """The layout of a family without a parallel plan (the enhancer's Wan DiT): one process, its
    blocks checkpointed and compiled as `parallel` asks."""
    if dims.world_size > 1:
        from mugv.errors import ConfigError

        raise ConfigError(f"this model family has no parallelize plan: it trains in one process, not {dims.world_size}")
    apply_block_transforms(list(model.blocks), cfg)
    return ParallelPlan(dims=dims, mesh=mesh, coords=dims.coordinates(rank or 0))


PARALLELIZE = {"mug-dit": parallelize_dit, "wan-dit": one_process_only}


def parallelize_model(model: nn.Module, dims: ParallelDims, mesh, cfg: ParallelConfig, rank: int | None = None,
                      *, family: str | None = None, **kwargs) -> ParallelPlan:
    """Apply the parallel layout to a model of any registered family (`family`: the model's
    `cfg.family` when not given, for modules that carry no mugv config)."""
    family = family or model.cfg.family
    if family not in PARALLELIZE:
        from mugv.errors import ConfigError

        raise ConfigError(f"model family {family!r} has no parallelize plan; it can train in one process only")
    return PARALLELIZE[family](model, dims, mesh, cfg, rank, **kwargs)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t._local_tensor if isinstance(t, DTensor) else t


@torch.no_grad()
def finish_gradients(model: nn.Module, plan: ParallelPlan) -> None:
    """After backward: sum the gradients tensor parallel does not shard over the tp ranks, and
    complete the partial ones of replicated DTensor parameters (a row-parallel layer's LoRA B
    sees only its rank's input columns; FSDP2 does this itself when it shards too)."""
    if plan.dims.tp == 1:
        return
    group = plan.group("tp")
    for name, param in model.named_parameters():
        if param.grad is None:
            continue
        if name not in plan.tp_sharded:
            dist.all_reduce(local_tensor(param.grad), group=group)
        elif param.grad.placements != param.placements:
            param.grad = param.grad.redistribute(param.grad.device_mesh, param.placements)


@torch.no_grad()
def clip_grad_norm_(params, max_norm: float, extra_groups=(), skip_in_norm: set[int] = frozenset()) -> torch.Tensor:
    """Global gradient-norm clipping over (possibly sharded) parameters.

    Squares are summed locally, then over every mesh dimension on which a DTensor gradient is
    sharded, and over `extra_groups` (pipeline stages hold different parameters). Parameters whose
    id is in `skip_in_norm` (copies held elsewhere too) are clipped but not counted.
    """
    from torch.distributed.tensor import DTensor, Replicate

    params = [p for p in params if p.grad is not None]
    grads = [p.grad for p in params]
    if not extra_groups and not skip_in_norm and not any(isinstance(g, DTensor) for g in grads):
        # nothing is sharded (one process, or plain data parallel): torch's own clipping, so that a
        # single process trains bit-identically to a plain PyTorch loop
        return torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    buckets: dict[tuple, torch.Tensor] = {}
    groups: dict[tuple, list] = {}
    for g in (p.grad for p in params if id(p) not in skip_in_norm):
        if isinstance(g, DTensor):
            mesh = g.device_mesh
            dims = tuple(i for i, pl in enumerate(g.placements) if not isinstance(pl, Replicate))
            key = (id(mesh), dims)
            groups[key] = [mesh.get_group(i) for i in dims]
            local = g._local_tensor
        else:
            key = ("plain",)
            groups[key] = []
            local = g
        sq = local.float().pow(2).sum()
        buckets[key] = buckets[key] + sq if key in buckets else sq
    device = grads[0].device if grads else torch.device("cpu")
    total = torch.zeros((), device=device)
    for key, sq in buckets.items():
        for group in groups[key]:
            dist.all_reduce(sq, group=group)
        total = total + sq
    for group in extra_groups:
        dist.all_reduce(total, group=group)
    norm = total.sqrt()
    if max_norm > 0:
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for g in grads:
            local_tensor(g).mul_(coef.to(g.dtype))
    return norm
