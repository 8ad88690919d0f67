"""The parallel side of every training run: ranks, parallel degrees, device, parallelized model,
per-data-parallel-rank data and noise, gradient finishing, metric reduction and gathering.

`init_runtime(cfg)` always returns a `Runtime`. Under torchrun (WORLD_SIZE > 1) it joins the
process group and builds the device mesh. One process is the trivial layout: world size 1, every
parallel degree 1, no process group and no mesh, so nothing opens a port and one process may
build any number of trainers. Every collective here runs over the ranks of one parallel axis;
with every degree 1 that group is this process alone and the collective is skipped, so the
trainer runs the same code at every world size (activation checkpointing and compile included).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import torch
import torch.distributed as dist

from mugv.config import ConfigError, RunConfig
from mugv.distributed.parallel_dims import ParallelDims
from mugv.distributed.parallelize import (
    ParallelPlan,
    clip_grad_norm_,
    finish_gradients,
    parallelize_dit,
    parallelize_model,
)
from mugv.utils.device import resolve_device


def torchrun_world() -> tuple[int, int, int]:
    """(rank, local rank, world size) from the torchrun / SLURM-launched environment."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")))


@dataclass
class Runtime:
    cfg: RunConfig
    rank: int
    world_size: int
    device: torch.device
    dims: ParallelDims
    mesh: object | None  # None for one process: every axis has this process alone
    owns_group: bool = False  # `init_runtime` started the process group, so `close` ends it
    plan: ParallelPlan | None = None
    schedule: object | None = None  # pipeline schedule (pp > 1)
    stages: list | None = None  # this rank's pipeline stage modules (pp > 1)
    stage_plans: list | None = None

    @property
    def coords(self) -> dict[str, int]:
        return self.dims.coordinates(self.rank)

    @property
    def dp_rank(self) -> int:
        return self.coords["dp"]

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dp_group(self):
        """The process group of this rank's data-parallel peers; None when it has none."""
        return self.mesh["dp"].get_group() if self.dims.dp > 1 else None

    @property
    def dp_leader(self) -> bool:
        """The rank that writes its data-parallel replica's share of a checkpoint (its step generator)."""
        coords = self.coords
        return coords["tp"] == coords["cp"] == coords["pp"] == 0

    def parallelize(self, model: torch.nn.Module) -> ParallelPlan:
        """Lay out the trained model: TP/SP, CP, activation checkpointing, compile and FSDP2 as the
        degrees ask (one process: activation checkpointing and compile), or this rank's pipeline stages."""
        if self.dims.pp > 1:
            return self._build_pipeline(model)
        self.plan = parallelize_model(model, self.dims, self.mesh, self.cfg.parallel, rank=self.rank,
                                      family=self.cfg.model.family)
        return self.plan

    def parallelize_copy(self, model: torch.nn.Module, cpu_offload: bool = False) -> ParallelPlan:
        """Lay out a frozen copy of the model (a preference objective's reference) as the model is;
        `cpu_offload`: FSDP2 keeps its shards in CPU memory (one process: the caller streams its blocks)."""
        if self.dims.pp > 1:
            raise ConfigError(f"train.objective = {self.cfg.train.objective!r} keeps a frozen reference copy, "
                              "which parallel.pp > 1 does not support")
        if cpu_offload and self.world_size > 1 and not self.dims.fsdp_enabled:
            raise ConfigError("preference.reference_offload = true on several ranks offloads FSDP2 shards: it needs "
                              "parallel.dp_shard, dp_replicate or cp > 1")
        return parallelize_model(model, self.dims, self.mesh, self.cfg.parallel, rank=self.rank,
                                 family=self.cfg.model.family, cpu_offload=cpu_offload)

    # ------------------------------------------------------------------------------------------
    # Pipeline parallel
    # ------------------------------------------------------------------------------------------

    @property
    def pipelined(self) -> bool:
        return self.stages is not None

    def _build_pipeline(self, model) -> ParallelPlan:
        from mugv.distributed.pipeline import build_pipeline, release_other_stages

        dims, p = self.dims, self.cfg.parallel
        if self.cfg.data.batch_size % p.pp_microbatches:
            raise ConfigError(f"data.batch_size = {self.cfg.data.batch_size} (per data-parallel rank) must be "
                              f"divisible by parallel.pp_microbatches = {p.pp_microbatches}")
        self.stage_plans = []

        def prepare(stage):  # TP / CP / AC / compile / FSDP2 on each stage, as for a whole model
            self.stage_plans.append(parallelize_dit(stage, dims, self.mesh, p, rank=self.rank,
                                                    blocks=list(stage.blocks.values()), split_tokens=stage.first))

        self.schedule, self.stages = build_pipeline(model, dims, self.mesh, p, self.rank, self.device,
                                                    loss_fn=self._pipeline_loss, prepare=prepare)
        release_other_stages(model, self.stages)
        self.plan = self.stage_plans[0]
        return self.plan

    @staticmethod
    def _pipeline_loss(prediction, packed):
        from mugv.distributed.pipeline import pipeline_loss

        return pipeline_loss(prediction, packed)

    @property
    def builds_on_meta(self) -> bool:
        """Whether the model is laid out on the meta device and filled from rank 0 (several ranks)."""
        return self.world_size > 1

    def materialise(self, model: torch.nn.Module, source: dict[str, torch.Tensor] | None,
                    others: list[tuple[torch.nn.Module, torch.device]] = ()) -> None:
        """Give the parallelized meta-device model (this rank's stages under a pipeline) and the
        `others` (module, device) memory and fill them from global rank 0's full CPU tensors
        `source` (None on the other ranks); see mugv.distributed.materialise."""
        from mugv.distributed.materialise import materialise, share_rng_state

        trained = self.trained_modules(model)
        targets = [(m, self.device) for m in (trained if isinstance(trained, list) else [trained])]
        progress = self.is_main and self.cfg.logging.progress
        materialise([*targets, *others], source, self.device, progress)
        if self.pipelined:
            from mugv.distributed.pipeline import adopt_stage_tokens

            adopt_stage_tokens(model, self.stages)
        share_rng_state()

    def trained_modules(self, model: torch.nn.Module):
        """What the optimizer and checkpoints see: the model, or this rank's pipeline stages."""
        return list(self.stages) if self.pipelined else model

    def forward_backward(self, objective, model, batch, generator, reference,
                         autocast: Callable[[], contextlib.AbstractContextManager]) -> tuple[torch.Tensor, dict]:
        """One batch's loss and gradients: (loss, the objective's metrics). A pipeline's schedule
        runs forward and backward per microbatch; otherwise the objective runs on the whole model
        (backward outside autocast, as the gradients are fp32)."""
        if self.pipelined:
            with autocast():
                return self.pipeline_step(objective, model, batch, generator), {}
        with autocast():
            out = objective.compute(model, batch, generator, reference)
        out.loss.backward()
        return out.loss, out.metrics

    def pipeline_step(self, objective, model, batch, generator) -> torch.Tensor:
        """Forward + backward of one batch through the schedule; returns the loss on every rank."""
        from mugv.distributed.pipeline import pipeline_inputs, pipeline_target

        inputs = objective.prepare(model, batch, generator)
        args = pipeline_inputs(inputs.noisy, inputs.sigma * objective.flow.num_train_timesteps, inputs.text,
                               inputs.text_mask, inputs.frame_mask, batch.fps)
        target = pipeline_target(inputs.target, inputs.frame_mask, inputs.sample_weight)
        first = any(s.first for s in self.stages)
        last = any(s.last for s in self.stages)
        losses: list = []
        kwargs = {"target": target, "losses": losses} if last else {}
        self.schedule.step(*(args if first else ()), **kwargs)
        loss = torch.stack(losses).float().mean().detach() if last else torch.zeros((), device=self.device)
        dist.all_reduce(loss, group=self.mesh["pp"].get_group())  # only the last stage had it
        return loss

    def data_source(self):
        """This data-parallel rank's share of every global batch (one process: all of it)."""
        from mugv.distributed.data import build_dp_data_source

        return build_dp_data_source(self.cfg, self.dp_rank, self.dims.dp)

    def generator_seed(self, seed: int) -> int:
        """Each data-parallel rank draws its own noise, its tp / cp / pp ranks the same (rank 0: `seed`)."""
        from mugv.distributed.data import dp_generator_seed

        return dp_generator_seed(seed, self.dp_rank)

    @property
    def ranks_per_replica(self) -> int:
        """The ranks that share one data-parallel replica's work (tp x cp x pp)."""
        return self.dims.tp * self.dims.cp * self.dims.pp

    def gather(self, trained, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full CPU tensors in the MUG-V layout of `tensors` named like `trained`'s parameters (EMA
        averages, LoRA factors): a collective every rank calls; only the main rank keeps them."""
        from mugv.distributed.checkpoint import full_tensors

        return full_tensors(trained, tensors, keep=self.is_main)

    def finish_gradients(self, model: torch.nn.Module, max_norm: float) -> torch.Tensor:
        """Complete the gradient reductions FSDP2 does not do, then clip by the global norm."""
        if self.pipelined:
            from mugv.distributed.pipeline import (
                conditioning_duplicates,
                finish_pipeline_gradients,
            )

            group = self.mesh["pp"].get_group()
            for stage, plan in zip(self.stages, self.stage_plans, strict=True):
                finish_gradients(stage, plan)
            finish_pipeline_gradients(self.stages, group)
            params = list({id(p): p for s in self.stages for p in s.parameters()}.values())
            return clip_grad_norm_(params, max_norm, extra_groups=[group],
                                   skip_in_norm=conditioning_duplicates(self.stages, self.coords["pp"]))
        finish_gradients(model, self.plan)
        return clip_grad_norm_(list(model.parameters()), max_norm)

    def mean_over_dp(self, value: torch.Tensor) -> float:
        value = value.detach().float().clone()
        if self.dp_group is not None:
            dist.all_reduce(value, group=self.dp_group)
            value /= self.dims.dp
        return value.item()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_runtime(cfg: RunConfig) -> Runtime:
    """The runtime of this process: the torchrun process group and mesh when WORLD_SIZE > 1, else
    the trivial one-process layout (no process group, `train.device`)."""
    rank, local_rank, world_size = torchrun_world()
    dims = ParallelDims.from_config(cfg.parallel, world_size, cfg.model)
    if world_size == 1:
        return Runtime(cfg=cfg, rank=0, world_size=1, device=resolve_device(cfg.train.device), dims=dims, mesh=None)
    wanted = cfg.train.device
    use_cuda = torch.cuda.is_available() and wanted in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(
            "nccl" if use_cuda else "gloo", rank=rank, world_size=world_size,
            timeout=datetime.timedelta(minutes=10),
        )
    mesh = dims.build_mesh(device.type)
    return Runtime(cfg=cfg, rank=rank, world_size=world_size, device=device, dims=dims, mesh=mesh,
                   owns_group=owns_group)


class SilentLogger:
    """The logger of ranks other than 0: accepts everything, writes nothing."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def message(self, text: str) -> None:
        return None

    def log(self, step: int, metrics: dict) -> None:
        return None

    def sync(self) -> None:
        return None

    def finish(self) -> None:
        return None
