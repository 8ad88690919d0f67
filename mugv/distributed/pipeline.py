"""Pipeline parallelism for MUG-DiT with torch.distributed.pipelining (1F1B, GPipe, interleaved 1F1B).

The block stack is cut into `pp x stages_per_rank` contiguous stages. Every stage holds the
conditioning embedders (timestep, fps, adaLN-single projection, text) and recomputes the
conditioning from the raw timestep / fps / text that travel down the pipeline with the tokens;
the first stage also holds the patch embedding and the start/end tokens, the last the final
layer, and the loss is computed on the last stage. Parameter names stay those of the full model
("blocks.7.attn.qkv.weight"), so checkpoints are interchangeable with every other layout.

Between stages flow (tokens, latents, timestep, text, text_mask, frame_mask, fps); the masks
travel as float. The latents are carried for their shape (and are small next to the tokens).
Each stage's copy of the conditioning embedders receives only its own blocks' share of the
gradient; `finish_pipeline_gradients` sums them over the pipeline ranks.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

from mugv.flow import masked_flow_loss
from mugv.models.dit.model import MUGDiT

CONDITIONING = ("t_embedder", "fps_embedder", "t_block", "y_embedder")


def split_blocks(depth: int, stages: int) -> list[range]:
    """Contiguous block ranges, the first stages taking one more when depth does not divide."""
    base, extra = divmod(depth, stages)
    out, start = [], 0
    for s in range(stages):
        n = base + (1 if s < extra else 0)
        out.append(range(start, start + n))
        start += n
    return out


class DiTStage(nn.Module):
    """One pipeline stage of a MUGDiT, sharing the full model's modules (and names)."""

    # The stage runs the model's own stage functions on its subset of modules.
    embed = MUGDiT.embed
    condition = MUGDiT.condition
    forward_blocks = MUGDiT.forward_blocks
    head = MUGDiT.head
    unpatchify = MUGDiT.unpatchify

    def __init__(self, model: MUGDiT, blocks: range, first: bool, last: bool, copy_conditioning: bool = False):
        super().__init__()
        self.cfg = model.cfg
        self.first, self.last = first, last
        for name in CONDITIONING:  # a second stage on the same rank gets its own copy (FSDP needs that)
            module = getattr(model, name)
            setattr(self, name, copy.deepcopy(module) if copy_conditioning else module)
        if first:
            self.x_embedder = model.x_embedder
            self.start_token = model.start_token
            self.end_token = model.end_token
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in blocks})
        if last:
            self.final_layer = model.final_layer

    def forward(self, *args: torch.Tensor):
        if self.first:
            x, timestep, text, text_mask, frame_mask, fps = args
            tokens = None
        else:
            tokens, x, timestep, text, text_mask, frame_mask, fps = args
        kw = {"fps": fps, "text_mask": text_mask > 0.5, "frame_mask": frame_mask > 0.5}
        if self.first:
            inputs = self.embed(x, timestep, text, **kw)
        else:
            dtype = next(self.t_block.parameters()).dtype
            inputs = self.condition(x.shape, timestep, text, dtype=dtype, tokens=tokens, **kw)
        tokens = self.forward_blocks(inputs, self.blocks.values())
        if self.last:
            return self.head(tokens, inputs)
        return tokens, x, timestep, text, text_mask, frame_mask, fps


def release_other_stages(model: MUGDiT, stages: list[DiTStage]) -> None:
    """Free what none of this rank's `stages` holds: the other stages' blocks, and the patch
    embedding and start / end tokens without the first stage, the final layer without the last.
    They move to the meta device, so the model keeps its names and shapes, not their memory."""
    held = {id(t) for stage in stages for t in [*stage.parameters(), *stage.buffers()]}

    def unheld(module: nn.Module) -> bool:
        return not any(id(t) in held for t in [*module.parameters(), *module.buffers()])

    for module in [*model.blocks, model.x_embedder, model.final_layer]:
        if unheld(module):
            module.to("meta")
    for name in ("start_token", "end_token"):
        token = getattr(model, name)
        if id(token) not in held:
            setattr(model, name, nn.Parameter(token.detach().to("meta"), requires_grad=token.requires_grad))


def adopt_stage_tokens(model: MUGDiT, stages: list[DiTStage]) -> None:
    """The model holds the first stage's start / end tokens again once the stage has its own
    (materialised or sharded: new parameter objects), as it shared them when the stage was cut."""
    for stage in stages:
        if stage.first:
            model.start_token, model.end_token = stage.start_token, stage.end_token


def pipeline_inputs(noisy, timestep, text, text_mask, frame_mask, fps) -> tuple[torch.Tensor, ...]:
    """The first stage's arguments (masks as float, so every stage boundary carries float tensors)."""
    return noisy, timestep, text, text_mask.float(), frame_mask.float(), fps


def pipeline_target(target: torch.Tensor, frame_mask: torch.Tensor, sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Velocity target with the frame mask and the sample weight packed as two extra channels
    (so they are split into microbatches with it)."""
    b, _, t, h, w = target.shape
    mask = frame_mask.to(target.dtype)[:, None, :, None, None].expand(b, 1, t, h, w)
    weight = torch.ones(b, device=target.device) if sample_weight is None else sample_weight
    weight = weight.to(target.dtype)[:, None, None, None, None].expand(b, 1, t, h, w)
    return torch.cat([target, mask, weight], dim=1)


def pipeline_loss(prediction: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    target, mask, weight = packed[:, :-2], packed[:, -2, :, 0, 0] > 0.5, packed[:, -1, 0, 0, 0]
    return masked_flow_loss(prediction, target, mask, weight)


def build_pipeline(model: MUGDiT, dims, mesh, cfg, rank: int, device: torch.device, loss_fn=pipeline_loss,
                   prepare=None):
    """Cut `model` into this rank's stage(s) and build the schedule.

    Returns (schedule, stages): `stages` are the DiTStage modules this pp rank owns (one, or
    `cfg.pp_stages_per_rank` for the interleaved schedule; rank r owns stages r, r + pp, ...).
    `prepare(stage)` parallelizes each stage module (TP / CP / FSDP2 ...) before its
    PipelineStage is made.
    """
    from torch.distributed.pipelining import (
        PipelineStage,
        Schedule1F1B,
        ScheduleGPipe,
        ScheduleInterleaved1F1B,
    )

    pp_rank = dims.coordinates(rank)["pp"]
    per_rank = cfg.pp_stages_per_rank
    total = dims.pp * per_rank
    if model.cfg.depth < total:
        from mugv.config import ConfigError

        raise ConfigError(f"model.depth = {model.cfg.depth} blocks cannot fill {total} pipeline stages "
                          f"(parallel.pp x pp_stages_per_rank = {dims.pp} x {per_rank})")
    ranges = split_blocks(model.cfg.depth, total)
    group = mesh["pp"].get_group()
    modules, stages = [], []
    for local in range(per_rank):
        index = pp_rank + local * dims.pp
        module = DiTStage(model, ranges[index], first=index == 0, last=index == total - 1, copy_conditioning=local > 0)
        if prepare is not None:
            prepare(module)
        modules.append(module)
        stages.append(PipelineStage(module, index, total, device, group=group))
    if cfg.pp_schedule == "interleaved_1f1b":
        schedule = ScheduleInterleaved1F1B(stages, n_microbatches=cfg.pp_microbatches, loss_fn=loss_fn)
    elif cfg.pp_schedule == "gpipe":
        schedule = ScheduleGPipe(stages[0], n_microbatches=cfg.pp_microbatches, loss_fn=loss_fn)
    else:
        schedule = Schedule1F1B(stages[0], n_microbatches=cfg.pp_microbatches, loss_fn=loss_fn)
    return schedule, modules


@torch.no_grad()
def finish_pipeline_gradients(stage_modules: list[nn.Module], pp_group) -> None:
    """Sum the conditioning embedders' gradients over every stage copy on every pipeline rank and
    give each copy the total (so the copies, updated identically, stay equal)."""
    from mugv.distributed.parallelize import local_tensor

    for name in CONDITIONING:
        copies = [list(getattr(m, name).parameters()) for m in stage_modules]
        for params in zip(*copies):
            total = sum(local_tensor(p.grad) if p.grad is not None else torch.zeros_like(local_tensor(p))
                        for p in params)
            dist.all_reduce(total, group=pp_group)
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                local_tensor(p.grad).copy_(total)


def conditioning_duplicates(stage_modules: list[nn.Module], pp_rank: int) -> set[int]:
    """ids of the conditioning parameters to leave out of the global grad norm: every copy but
    the one of pp rank 0's first stage (the copies hold the same summed gradient)."""
    keep = stage_modules[0] if pp_rank == 0 else None
    return {id(p) for m in stage_modules if m is not keep for name in CONDITIONING
            for p in getattr(m, name).parameters()}
