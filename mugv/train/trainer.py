"""The training loop: flow matching with AdamW, LR schedule, clipping, logging and exact resume.

Later capabilities plug in without changing the loop: a data source is any object with
`next_batch()`, `state_dict()` and `load_state_dict()`; a parallelised model is passed in ready
made; hooks see every step (sampling, EMA, validation).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Protocol

import torch

from mugv.config import RunConfig, to_dict, to_toml
from mugv.data.batch import LatentBatch
from mugv.data.sources import DataSource, build_data_source
from mugv.models.dit.adapters import load_into, read_weights
from mugv.models.dit.model import MUGDiT
from mugv.train.checkpoint import (
    CheckpointError,
    TrainingState,
    latest_checkpoint,
    load_training_state,
    save_training_state,
)
from mugv.train.logger import RunLogger
from mugv.train.metrics import batch_train_flops, device_peak_tflops, peak_memory_gib
from mugv.train.objective import ConditioningPolicy, FlowMatchingObjective
from mugv.train.schedule import lr_multiplier


class TrainerHook(Protocol):
    def on_step_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None: ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only; norms, biases, tables and tokens are not decayed."""
    decay, keep = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else keep).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


class Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        *,
        model: MUGDiT | None = None,
        data: DataSource | None = None,
        hooks: tuple[TrainerHook, ...] = (),
    ):
        self.cfg = cfg
        # Under torchrun (WORLD_SIZE > 1): process group, mesh and parallelized model; else None.
        from mugv.distributed.runtime import init_distributed

        self.dist = init_distributed(cfg)
        self.device = self.dist.device if self.dist else resolve_device(cfg.train.device)
        torch.manual_seed(cfg.train.seed)
        self.model = (model or MUGDiT(cfg.model)).to(self.device)
        if cfg.checkpoint.init_weights:
            load_into(self.model, read_weights(cfg.checkpoint.init_weights), layout="mugv")
        if self.dist:
            self.dist.parallelize(self.model)
        self.data = data or (self.dist.data_source() if self.dist else build_data_source(cfg))
        self.objective = FlowMatchingObjective(
            cfg.flow, ConditioningPolicy(first_frame_prob=cfg.data.i2v_prob, caption_dropout=cfg.data.caption_dropout)
        )
        # what is trained and checkpointed: the model, or (pipeline parallel) this rank's stages
        self.trained = self.dist.trained_modules(self.model) if self.dist else self.model
        trained = torch.nn.ModuleList(self.trained) if isinstance(self.trained, list) else self.trained
        self.optimizer = torch.optim.AdamW(
            param_groups(trained, cfg.optim.weight_decay), lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
            # sharded parameters live on different meshes (FSDP only vs FSDP x TP): no multi-tensor path
            foreach=False if self.dist else None,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_multiplier(step, cfg.train.steps, cfg.optim)
        )
        seed = cfg.train.seed
        if self.dist:  # each data-parallel rank draws its own noise; its tp / cp ranks the same
            from mugv.distributed.data import dp_generator_seed

            seed = dp_generator_seed(seed, self.dist.dp_rank)
        self.generator = torch.Generator().manual_seed(seed)
        self.hooks = hooks
        self.step = 0
        precision = cfg.train.precision
        self.use_bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        self.peak_tflops = device_peak_tflops(self.device, cfg.logging.peak_tflops)

    # ----------------------------------------------------------------------------------------
    # Checkpoints
    # ----------------------------------------------------------------------------------------

    def state(self) -> TrainingState:
        return TrainingState(
            step=self.step,
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            data=self.data.state_dict(),
            generator=self.generator.get_state(),
            extra={"config": to_dict(self.cfg)},
        )

    def save_checkpoint(self) -> Path:
        if self.dist:
            from mugv.distributed.checkpoint import save_distributed

            coords = self.dist.coords
            meta = {"scheduler": self.scheduler.state_dict(), "data": self.data.state_dict(),
                    "config": to_dict(self.cfg), "world_size": self.dist.world_size, "dp_size": self.dist.dims.dp}
            path, _ = save_distributed(self.cfg.checkpoint_dir, self.step, self.trained, self.optimizer, meta,
                                       self.generator.get_state(), self.cfg.checkpoint.keep_last,
                                       dp_rank=self.dist.dp_rank,
                                       dp_leader=coords["tp"] == coords["cp"] == coords["pp"] == 0)
            return path
        return save_training_state(self.cfg.checkpoint_dir, self.state(), self.cfg.checkpoint.keep_last)

    def _resume_distributed(self, path: Path) -> None:
        """Resume from a DCP checkpoint written by any parallel layout (or by one process)."""
        from mugv.distributed.checkpoint import load_distributed

        if not (path / ".metadata").is_file():
            raise CheckpointError(f"{path} is a single-process checkpoint; a distributed run resumes from DCP "
                                  "checkpoints (load its model.safetensors with checkpoint.init_weights instead)")
        dp_rank, dp_size = (self.dist.dp_rank, self.dist.dims.dp) if self.dist else (0, 1)
        meta, generator = load_distributed(path, self.trained, self.optimizer, dp_rank=dp_rank)
        saved_model = meta.get("config", {}).get("model")
        if saved_model is not None and saved_model != to_dict(self.cfg.model):
            raise CheckpointError(f"checkpoint {path} was trained with different model settings")
        self.scheduler.load_state_dict(meta["scheduler"])
        self.data.load_state_dict(meta["data"])
        if generator is not None and meta.get("dp_size") == dp_size:  # same data-parallel size: exact
            self.generator.set_state(generator)
        else:  # another data-parallel size: the noise streams restart from the seed, offset by the step
            self.generator.manual_seed(self.generator.initial_seed() + 7919 * int(meta["step"]))
        self.step = int(meta["step"])

    def resume(self) -> Path | None:
        """Continue from the checkpoint that `checkpoint.resume` names; None when starting fresh."""
        choice = self.cfg.checkpoint.resume
        if choice == "none":
            return None
        path = latest_checkpoint(self.cfg.checkpoint_dir) if choice == "auto" else Path(choice)
        if path is None:
            return None
        if not path.is_dir():
            raise CheckpointError(f"checkpoint.resume = {choice!r}: no checkpoint directory at {path}")
        if self.dist or (path / ".metadata").is_file():  # DCP: written by a distributed run
            self._resume_distributed(path)
            return path
        state = load_training_state(path)
        saved_model = state.extra.get("config", {}).get("model")
        if saved_model is not None and saved_model != to_dict(self.cfg.model):
            changed = sorted(k for k in saved_model if saved_model[k] != to_dict(self.cfg.model).get(k))
            raise CheckpointError(f"checkpoint {path} was trained with different model settings: {', '.join(changed)}")
        self.model.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.data.load_state_dict(state.data)
        self.generator.set_state(state.generator)
        self.step = state.step
        return path

    # ----------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.use_bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def train_step(self, batch: LatentBatch) -> dict[str, float]:
        self.model.train()
        batch = batch.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        if self.dist and self.dist.pipelined:  # the schedule runs forward and backward per microbatch
            with self.autocast():
                loss = self.dist.pipeline_step(self.objective, self.model, batch, self.generator)
        else:
            with self.autocast():
                loss = self.objective.loss(self.model, batch, self.generator)
            loss.backward()
        if self.dist:
            grad_norm = self.dist.finish_gradients(self.model, self.cfg.optim.grad_clip)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
            )
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        loss_value = self.dist.mean_over_dp(loss) if self.dist else loss.item()
        return {"loss": loss_value, "grad_norm": grad_norm.item(), "lr": lr}

    def fit(self) -> list[dict[str, float]]:
        """Train up to `train.steps`, checkpointing as configured; returns every step's metrics."""
        cfg = self.cfg
        run_dir = cfg.resolved_run_dir
        main = self.dist is None or self.dist.is_main
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.toml").write_text(to_toml(cfg))
        resumed = self.resume()
        history: list[dict[str, float]] = []
        if main:
            run_logger = RunLogger(run_dir, cfg.logging, total_steps=cfg.train.steps, start_step=self.step)
        else:  # only rank 0 logs
            from mugv.distributed.runtime import SilentLogger

            run_logger = SilentLogger()
        with run_logger as logger:
            if resumed is not None:
                logger.message(f"resumed from {resumed} at step {self.step}")
            while self.step < cfg.train.steps:
                wait_start = time.perf_counter()
                batch = self.data.next_batch()
                step_start = time.perf_counter()
                metrics = self.train_step(batch)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                step_end = time.perf_counter()
                metrics.update(self.throughput(batch, step_end - wait_start, step_start - wait_start))
                metrics["step"] = self.step
                history.append(metrics)
                logger.log(self.step, metrics)
                for hook in self.hooks:
                    hook.on_step_end(self, metrics)
                every = cfg.checkpoint.every_steps
                if (every and self.step % every == 0) or self.step == cfg.train.steps:
                    logger.message(f"saved {self.save_checkpoint()}")
            logger.finish()
        return history

    def throughput(self, batch: LatentBatch, step_seconds: float, data_seconds: float) -> dict[str, float]:
        flops = batch_train_flops(self.cfg.model, batch)
        if self.dist:  # this rank's share of its data-parallel replica's work
            dims = self.dist.dims
            flops /= dims.tp * dims.cp * dims.pp
        tflops = flops / step_seconds / 1e12
        out = {
            "step_time": step_seconds,
            "data_wait": data_seconds / step_seconds,
            "samples_per_s": batch.size * (self.dist.dims.dp if self.dist else 1) / step_seconds,
            "tflops": tflops,
            "memory_gib": peak_memory_gib(self.device),
        }
        if self.peak_tflops:
            out["mfu"] = tflops / self.peak_tflops
        return out
