"""Dry-run planning: the device mesh, the sharded model on the meta device, per-rank memory.

`format_plan(cfg, world_size)` validates the parallel layout against the model, then builds the
real mesh and runs the real `parallelize_dit` for rank 0 on the meta device under a fake process
group of `world_size` ranks (no devices, no memory), reading each parameter's local shard shape
from the resulting DTensors. Activation memory is an estimate from counted tensors (below).
"""

from __future__ import annotations

from dataclasses import dataclass

from mugv.config import RunConfig
from mugv.distributed.parallel_dims import ParallelDims
from mugv.distributed.pipeline import split_blocks

GIB = 2**30

# Activations one block keeps for its backward, in multiples of (tokens x hidden) elements held by
# one rank (sequence-parallel tensors are split over tp and cp, head-split ones over tp with cp
# chunks of the sequence: the same count). Counted from MUGDiTBlock.forward with a fused
# attention kernel (no N x N scores): norm 1, modulate 1, qkv 3, q/k after norm + RoPE 2,
# attention out 1, gate + residual 2, cross norm 1, cross q 1, cross attention out 1, MLP norm 1,
# modulate 1, fc1 4, GELU 4, gate + residual 2 = 26. `selective` keeps the matmul and attention
# outputs (qkv 3, attention 1, proj 1, cross q 1, cross attention 1, cross proj 1, fc1 4, fc2 1
# = 13); `attention` keeps the block input and the two attention outputs (3); `full` keeps the
# block input (1) and recomputes one block at a time.
SAVED_PER_BLOCK = {"none": 26, "selective": 13, "attention": 3, "full": 1}


@dataclass
class RankMemory:
    params: int  # local parameter elements (sharded)
    unsharded_block: int  # elements of one block's parameters after the FSDP all-gather (TP-local)
    activation_bytes: float
    param_bytes: float
    grad_bytes: float
    optimizer_bytes: float
    working_bytes: float
    average_bytes: float = 0.0  # EMA and power-EMA copies
    overhead_bytes: float = 0.0

    @property
    def total_bytes(self) -> float:
        return (self.param_bytes + self.grad_bytes + self.optimizer_bytes + self.working_bytes + self.activation_bytes
                + self.average_bytes + self.overhead_bytes)


def _meta_local_params(cfg: RunConfig, dims: ParallelDims) -> tuple[dict[str, int], dict[str, int]]:
    """(local elements by parameter name, global elements by name) for rank 0, from the real
    parallelization of a meta-device model under a fake process group."""
    import torch
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from mugv.distributed.parallelize import local_tensor, parallelize_model
    from mugv.models.registry import build_model

    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("fake", rank=0, world_size=dims.world_size, store=FakeStore())
    try:
        mesh = dims.build_mesh("cpu")
        with torch.device("meta"):
            model = build_model(cfg.model)
        parallelize_model(model, dims, mesh, cfg.parallel, rank=0)
        local = {n: local_tensor(p).numel() for n, p in model.named_parameters()}
        full = {n: p.numel() for n, p in model.named_parameters()}
    finally:
        if own_group:
            dist.destroy_process_group()
    return local, full


def stage_names(names, depth: int, blocks: range, first: bool, last: bool) -> list[str]:
    keep = []
    for n in names:
        if n.startswith("blocks."):
            if int(n.split(".")[1]) in blocks:
                keep.append(n)
        elif n.startswith(("x_embedder.", "start_token", "end_token")):
            if first:
                keep.append(n)
        elif n.startswith("final_layer."):
            if last:
                keep.append(n)
        else:  # conditioning embedders: on every stage
            keep.append(n)
    return keep


# CUDA context, NCCL buffers, cuBLAS / cuDNN workspaces and allocator fragmentation: a rule of
# thumb for one H100-class rank (GPU-READINESS.md section 6), not a measurement.
FIXED_OVERHEAD_GIB = 5.0


def planned_sequence(cfg: RunConfig) -> tuple[int | None, str]:
    """Tokens per sample the plan sizes activations for, and where that figure comes from.

    Shard-based runs take their largest bucket: from the curriculum stages' `buckets`, else from
    the shard index; `data.latent_*` describe only synthetic data.
    """
    from mugv.data.buckets import Bucket

    m = cfg.model
    if cfg.data.source != "shards":
        d = cfg.data
        return m.num_tokens(d.latent_frames, d.latent_height, d.latent_width), "data.latent_*"
    names = [name for stage in cfg.stages for name in stage.buckets]
    where = "the largest stage bucket"
    if not names:
        from mugv.data.shards import read_index
        from mugv.errors import MugvError

        try:
            names = sorted({record["bucket"] for record in read_index(cfg.data.shards)})
        except (OSError, ValueError, MugvError) as err:
            return None, f"unknown: no stage buckets and no readable shard index at data.shards = " \
                         f"{cfg.data.shards!r} ({err})"
        where = f"the largest bucket in {cfg.data.shards}"
    buckets = [Bucket.parse(name) for name in names]
    largest = max(buckets, key=lambda b: m.num_tokens(*b.latent_shape))
    return m.num_tokens(*largest.latent_shape), f"{where}, {largest.name}"


def estimate(cfg: RunConfig, dims: ParallelDims, local: dict[str, int],
             full: dict[str, int] | None = None) -> tuple[RankMemory, dict]:
    """Per-rank memory of pipeline stage 0 (the most loaded: it holds the most in-flight microbatches)."""
    p = cfg.parallel
    m = cfg.model
    stages = dims.pp * p.pp_stages_per_rank
    ranges = split_blocks(m.depth, stages)
    my_stages = [ranges[i * dims.pp] for i in range(p.pp_stages_per_rank)]  # pp rank 0
    names: set[str] = set()
    for i, r in enumerate(my_stages):
        names |= set(stage_names(local, m.depth, r, first=i == 0, last=(i * dims.pp) == stages - 1))
    params = sum(local[n] for n in names)
    blocks_here = sum(len(r) for r in my_stages)
    one_block = sum(v for n, v in local.items() if n.startswith("blocks.0."))
    fsdp = dims.dp_shard * dims.cp
    unsharded_block = one_block * fsdp if dims.fsdp_enabled else one_block

    if dims.pp > 1 and cfg.data.batch_size % p.pp_microbatches:
        from mugv.config import ConfigError

        raise ConfigError(f"data.batch_size = {cfg.data.batch_size} (per data-parallel rank) must be divisible by "
                          f"parallel.pp_microbatches = {p.pp_microbatches}")
    param_bytes = 2 if p.param_dtype == "bf16" else 4
    tokens, source = planned_sequence(cfg)
    micro = cfg.data.batch_size / (p.pp_microbatches if dims.pp > 1 else 1)
    tokens_per_rank = -(-(tokens or 0) // (dims.cp * dims.tp)) * micro
    in_flight = min(dims.pp, p.pp_microbatches) if dims.pp > 1 else 1
    act_dtype = 2 if (cfg.train.precision != "fp32") else 4
    saved = SAVED_PER_BLOCK[p.activation_checkpointing]
    per_block = tokens_per_rank * m.hidden_size * saved * act_dtype
    activations = per_block * blocks_here * in_flight
    if p.activation_checkpointing != "none":  # one block recomputed in full at a time
        activations += tokens_per_rank * m.hidden_size * SAVED_PER_BLOCK["none"] * act_dtype
    averages = (1 if cfg.ema.decay else 0) + len(cfg.ema.power_sigma_rels)  # fp32, sharded like the params
    mem = RankMemory(
        params=params,
        unsharded_block=unsharded_block,
        param_bytes=params * 4,  # fp32 master weights
        grad_bytes=params * 4,  # fp32 sharded gradients
        optimizer_bytes=params * 8,  # AdamW exp_avg + exp_avg_sq
        working_bytes=2 * unsharded_block * param_bytes if dims.fsdp_enabled else 0,  # current + prefetched block
        activation_bytes=activations,
        average_bytes=params * 4 * averages,
        overhead_bytes=FIXED_OVERHEAD_GIB * GIB,
    )
    info = {"tokens": tokens, "tokens_source": source, "tokens_per_rank": tokens_per_rank,
            "blocks_here": blocks_here, "in_flight": in_flight, "micro": micro, "averages": averages}
    return mem, info


def startup_lines(full: dict[str, int], world_size: int) -> list[str]:
    """What start-up holds beyond the training state (mugv.distributed.materialise): rank 0 the
    whole fp32 model in host memory; each rank's device one full tensor at a time while it is sent."""
    if world_size == 1:
        return [f"#   start-up: the one process builds the whole model in fp32, {sum(full.values()) * 4 / GIB:.2f} GiB"]
    return [f"#   start-up: rank 0 builds the whole model in fp32 in host memory, {sum(full.values()) * 4 / GIB:.2f} "
            f"GiB (freed once sent); the others lay it out on the meta device; each rank's device receives one full "
            f"tensor at a time (largest {max(full.values()) * 4 / 2**20:.1f} MiB) and keeps its shard"]


def format_plan(cfg: RunConfig, world_size: int, device_memory_gib: float = 80.0) -> str:
    dims = ParallelDims.from_config(cfg.parallel, world_size, cfg.model)
    local, full = _meta_local_params(cfg, dims)
    mem, info = estimate(cfg, dims, local, full)
    m, p = cfg.model, cfg.parallel
    heads = m.num_heads // (dims.tp * dims.cp_ulysses)
    sharding = f"FSDP2 over dp_shard x cp = {dims.dp_shard * dims.cp}"
    if dims.dp_replicate > 1:
        sharding += f", replicated x {dims.dp_replicate}"
    lines = [
        "",
        (f"# parallel plan: {m.preset} ({m.num_params() / 1e9:.2f} B parameters, depth {m.depth}, hidden "
         f"{m.hidden_size}, {m.num_heads} heads) on {world_size} ranks"),
        f"#   mesh       {dims.describe()}  (dims pp, dp_replicate, dp_shard, cp_ring, cp_ulysses, tp)",
        (f"#   data       {dims.dp} data-parallel replicas x batch {cfg.data.batch_size} = global batch "
         f"{dims.dp * cfg.data.batch_size} samples"),
        (f"#   sequence   {info['tokens']} tokens per sample ({info['tokens_source']}) -> "
         f"{info['tokens_per_rank']:.0f} per rank (cp {dims.cp} x tp {dims.tp}, padded), {heads} attention heads "
         f"per rank (tp {dims.tp} x ulysses {dims.cp_ulysses}; ring {dims.cp_ring})") if info["tokens"]
        else f"#   sequence   {info['tokens_source']}: activations are left out of the total",
        (f"#   pipeline   {dims.pp} ranks x {p.pp_stages_per_rank} stage(s), schedule {p.pp_schedule}, "
         f"{p.pp_microbatches} microbatches; stage 0 holds {info['blocks_here']} blocks, "
         f"{info['in_flight']} microbatch(es) in flight") if dims.pp > 1
        else f"#   pipeline   none: every rank holds all {info['blocks_here']} blocks",
        (f"#   sharding   {sharding}; params {p.param_dtype}, reduce {p.reduce_dtype}; activation "
         f"checkpointing {p.activation_checkpointing}; compile {p.compile}"),
        (f"#   meta-device check: parallelize_dit built rank 0's shards; its pipeline stage holds "
         f"{mem.params / 1e6:.1f} M of the model's {sum(full.values()) / 1e6:.1f} M parameters"),
        "# per-rank memory estimate (rank 0, pipeline stage 0), GiB:",
        f"#   parameters (fp32 master)        {mem.param_bytes / GIB:8.2f}",
        f"#   gradients (fp32, sharded)       {mem.grad_bytes / GIB:8.2f}",
        f"#   AdamW moments (fp32)            {mem.optimizer_bytes / GIB:8.2f}",
        f"#   unsharded blocks (FSDP, 2 live) {mem.working_bytes / GIB:8.2f}",
        (f"#   activations ({p.activation_checkpointing:>9} AC)     {mem.activation_bytes / GIB:8.2f}"
         f"   ({info['micro']:g} samples per microbatch)"),
        f"#   EMA / power-EMA averages ({info['averages']})    {mem.average_bytes / GIB:8.2f}",
    ]
    total = mem.total_bytes / GIB
    lines += [
        f"#   fixed overhead (rule of thumb)  {mem.overhead_bytes / GIB:8.2f}",
        f"#   total                           {total:8.2f}",
        *startup_lines(full, world_size),
    ]
    if total > device_memory_gib:
        lines.append(f"# WARNING: {total:.1f} GiB per rank exceeds {device_memory_gib:g} GiB of device memory")
    return "\n".join(lines)
