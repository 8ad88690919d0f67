"""The distributed side of a training run: process group from the torchrun environment, mesh,
parallelized model, per-data-parallel-rank data, gradient finishing and metric reduction.

`init_distributed(cfg)` returns None for a single process (no WORLD_SIZE > 1 in the
environment), so the single-process trainer path is untouched.
"""

from __future__ import annotations

import datetime
import os
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
)


def torchrun_world() -> tuple[int, int, int]:
    """(rank, local rank, world size) from the torchrun / SLURM-launched environment."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")))


@dataclass
class DistributedRuntime:
    cfg: RunConfig
    rank: int
    world_size: int
    device: torch.device
    dims: ParallelDims
    mesh: object
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

    def parallelize(self, model: torch.nn.Module) -> ParallelPlan:
        if self.dims.pp > 1:
            return self._build_pipeline(model)
        self.plan = parallelize_dit(model, self.dims, self.mesh, self.cfg.parallel, rank=self.rank)
        return self.plan

    # ------------------------------------------------------------------------------------------
    # Pipeline parallel
    # ------------------------------------------------------------------------------------------

    @property
    def pipelined(self) -> bool:
        return self.stages is not None

    def _build_pipeline(self, model) -> ParallelPlan:
        from mugv.distributed.pipeline import build_pipeline

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
        self.plan = self.stage_plans[0]
        return self.plan

    @staticmethod
    def _pipeline_loss(prediction, packed):
        from mugv.distributed.pipeline import pipeline_loss

        return pipeline_loss(prediction, packed)

    def trained_modules(self, model: torch.nn.Module):
        """What the optimizer and checkpoints see: the model, or this rank's pipeline stages."""
        return list(self.stages) if self.pipelined else model

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
        from mugv.distributed.data import build_dp_data_source

        return build_dp_data_source(self.cfg, self.dp_rank, self.dims.dp)

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
        if self.dims.dp > 1:
            dist.all_reduce(value, group=self.mesh["dp"].get_group())
            value /= self.dims.dp
        return value.item()

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(cfg: RunConfig) -> DistributedRuntime | None:
    """Join the process group that torchrun describes; None when running as one process."""
    rank, local_rank, world_size = torchrun_world()
    if world_size <= 1:
        return None
    dims = ParallelDims.from_config(cfg.parallel, world_size, cfg.model)
    wanted = cfg.train.device
    use_cuda = torch.cuda.is_available() and wanted in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if use_cuda else "gloo", rank=rank, world_size=world_size,
            timeout=datetime.timedelta(minutes=10),
        )
    mesh = dims.build_mesh(device.type)
    return DistributedRuntime(cfg=cfg, rank=rank, world_size=world_size, device=device, dims=dims, mesh=mesh)


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
