"""The training loop: flow matching with AdamW, LR schedule, clipping, logging and exact resume.

Later capabilities plug in without changing the loop: a data source is any object with
`next_batch()`, `state_dict()` and `load_state_dict()`; a parallelised model is passed in ready
made; hooks see every step (sampling, EMA, validation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import time
from pathlib import Path
from typing import Protocol

import torch

from mugv.config import ConfigError, RunConfig, to_dict, to_toml
from mugv.data.batch import LatentBatch
from mugv.data.sources import DataSource, build_data_source
from mugv.data.synthetic import SyntheticLatents
from mugv.distributed.optim import build_adamw
from mugv.models.attention import attention_backend, describe_backend
from mugv.models.dit.adapters import save_safetensors
from mugv.models.dit.model import MUGDiT
from mugv.models.registry import build_model, family_of
from mugv.train.checkpoint import CheckpointError, latest_checkpoint
from mugv.train.logger import RunLogger
from mugv.train.metrics import batch_train_flops, device_peak_tflops, peak_memory_gib
from mugv.train.curriculum import Curriculum, StageSettings
from mugv.train.ema import EMA, PowerEMA
from mugv.train.lora import apply_lora, lora_state_dict, save_peft_adapter
from mugv.train.objectives import build_objective, build_reference
from mugv.train.validation import validation_loss
from mugv.utils.determinism import seed_everything, use_deterministic_algorithms
from mugv.utils.seeds import held_out_seed, restart_seed


class TrainerHook(Protocol):
    def on_step_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None: ...


def freeze_parameters(model: torch.nn.Module, patterns: list[str]) -> None:
    """Keep the parameters whose names match any pattern (fnmatch) fixed during training."""
    if not patterns:
        return
    matched = [n for n, p in model.named_parameters() if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
    if not matched:
        raise ConfigError(f"train.freeze = {patterns} matches no parameter of the model")
    for name, param in model.named_parameters():
        if name in matched:
            param.requires_grad_(False)


def init_layout(cfg: RunConfig) -> str:
    """`checkpoint.init_layout`, checked against the layouts the model family loads."""
    family = family_of(cfg.model)
    allowed = ("auto", *family.layouts)
    if cfg.checkpoint.init_layout not in allowed:
        raise ConfigError(f"checkpoint.init_layout = {cfg.checkpoint.init_layout!r} is not one of "
                          f"{', '.join(map(repr, allowed))} (model family {family.name!r})")
    return cfg.checkpoint.init_layout


def load_init_weights(model: torch.nn.Module, cfg: RunConfig) -> None:
    """`checkpoint.init_weights` (a file, or a training step folder) into `model`, read in
    `checkpoint.init_layout`."""
    from mugv.distributed.checkpoint import read_model_weights

    family = family_of(cfg.model)
    load = family.load_init_weights or family.load_weights
    load(model, read_model_weights(cfg.checkpoint.init_weights, family.name), layout=init_layout(cfg))


def build_sample_renderer(cfg: RunConfig, model: MUGDiT, device: torch.device):
    """The hook that renders `sampling.prompts` with the weights being trained."""
    from mugv.infer.pipeline import GenerationRequest, VideoGenerator
    from mugv.models.text.encoders import build_text_encoder
    from mugv.models.vae import adapters as vae_adapters
    from mugv.models.vae.config import VAEConfig
    from mugv.models.vae.model import MUGVideoVAE
    from mugv.train.sampling import SampleRenderer

    s = cfg.sampling
    vae = MUGVideoVAE(VAEConfig.from_preset(s.vae_preset))
    vae_adapters.load_into(vae, vae_adapters.read_state_dict(s.vae))
    encoder = build_text_encoder(s.text_encoder, s.text_encoder_path, max_tokens=cfg.model.max_text_tokens)
    generator = VideoGenerator(model, vae, encoder, flow=cfg.flow, device=device,
                               dtype=next(model.parameters()).dtype, vae_precision=s.vae_precision)
    template = GenerationRequest(prompt="-", height=s.height, width=s.width, num_frames=s.frames, fps=s.fps,
                                 steps=s.steps, cfg_scale=s.cfg_scale)
    return SampleRenderer(generator, s.prompts, s.every_steps, cfg.resolved_run_dir, template,
                          tensorboard=cfg.logging.tensorboard)


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
        # ranks, parallel degrees, device and mesh: under torchrun the process group's, else one
        # process's trivial layout, which runs the same code (see mugv.distributed.runtime)
        from mugv.distributed.runtime import init_runtime

        self.runtime = init_runtime(cfg)
        self.device = self.runtime.device
        init_layout(cfg)  # on every rank: only the main one reads init_weights (below)
        use_deterministic_algorithms(cfg.train.deterministic)
        seed_everything(cfg.train.seed)
        # several ranks: only rank 0 builds the model with its values (in host memory), every rank
        # lays it out on the meta device and fills its part after parallelizing (materialise below)
        on_meta = model is None and self.runtime.builds_on_meta
        source = None
        if on_meta:
            if self.runtime.is_main:
                source = self.initial_model(build_model(cfg.model))
            with torch.device("meta"):
                self.model = build_model(cfg.model)
            if cfg.lora.rank:
                apply_lora(self.model, cfg.lora)
        else:  # one process (or a model handed in): on the device, as it trains
            self.model = self.initial_model((model or build_model(cfg.model)).to(self.device))
        freeze_parameters(self.model, cfg.train.freeze)
        if self.runtime.dims.pp > 1 and (cfg.ema.decay or cfg.ema.power_sigma_rels or cfg.lora.rank):
            # each pipeline rank holds only its stages: the exports would need a gather across them
            raise ConfigError("ema.* and lora.* are not supported with parallel.pp > 1: use FSDP / tensor / context "
                              "parallelism, or average checkpoints afterwards with `mugv ema ensemble`")
        if self.runtime.dims.pp > 1 and (cfg.validation.every_steps or cfg.sampling.every_steps):
            raise ConfigError("validation.every_steps and sampling.every_steps run the whole model, which a pipeline "
                              "rank (parallel.pp > 1) does not hold: validate or sample from its checkpoints")
        self.curriculum = Curriculum(cfg)
        self.objective = build_objective(cfg, self.curriculum.settings(0, 0).policy, self.runtime.dp_group)
        # made before parallelizing, so that a frozen copy is sharded like the model
        self.reference = build_reference(self.objective.reference, self.model, cfg.preference.reference_offload)
        self.runtime.parallelize(self.model)
        if self.reference is not None:
            self.reference.parallelize(self.runtime)
        if on_meta:  # rank 0 sends its values (then frees them); each rank keeps its part
            from mugv.distributed.checkpoint import model_tensors

            state = None if source is None else model_tensors(source)
            del source
            others = [] if self.reference is None else self.reference.homes(self.device)
            self.runtime.materialise(self.model, state, others)
            del state
        self.data = data or self.runtime.data_source()
        self.samples_seen = 0
        self._image_fraction: float | None = None
        self._buckets: list[str] = []
        # what is trained and checkpointed: the model, or (pipeline parallel) this rank's stages
        self.trained = self.runtime.trained_modules(self.model)
        trained = torch.nn.ModuleList(self.trained) if isinstance(self.trained, list) else self.trained
        self.optimizer = build_adamw(param_groups(trained, cfg.optim.weight_decay), cfg.optim, self.device)
        self.ema = EMA(self.model, cfg.ema.decay) if cfg.ema.decay else None
        self.power_ema = PowerEMA(self.model, cfg.ema.power_sigma_rels) if cfg.ema.power_sigma_rels else None
        self.generator = torch.Generator().manual_seed(self.runtime.generator_seed(cfg.train.seed))
        self.hooks = hooks
        self.step = 0
        precision = cfg.train.precision
        self.use_bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        self.peak_tflops = device_peak_tflops(self.device, cfg.logging.peak_tflops)

    def initial_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` with its starting values: `checkpoint.init_weights` loaded, LoRA factors added."""
        cfg = self.cfg
        if cfg.checkpoint.init_weights:
            load_init_weights(model, cfg)
        if cfg.lora.rank:
            apply_lora(model, cfg.lora)
        return model

    # ----------------------------------------------------------------------------------------
    # Checkpoints
    # ----------------------------------------------------------------------------------------

    def schedule_state(self) -> dict:
        """Where the run stands in its curriculum (stage, LR schedule position, plateau tracker)."""
        return {"curriculum": self.curriculum.state_dict(), "samples_seen": self.samples_seen}

    def load_schedule_state(self, state: dict) -> None:
        self.curriculum.load_state_dict(state["curriculum"])
        self.samples_seen = int(state["samples_seen"])

    def ema_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        tensors = {}
        if self.ema is not None:
            tensors["ema"] = self.ema.state_dict()
        if self.power_ema is not None:
            for i, average in enumerate(self.power_ema.averages):
                tensors[f"power_ema_{i}"] = average
        return tensors

    def check_power_ema_widths(self, saved_config: dict, path: Path) -> None:
        """The saved averages are stored by position: their widths must be the configured ones."""
        saved = saved_config.get("ema", {}).get("power_sigma_rels")
        if self.power_ema is not None and saved and tuple(saved) != self.power_ema.sigma_rels:
            raise CheckpointError(f"checkpoint {path} holds power-EMA averages of widths {saved}, "
                                  f"but ema.power_sigma_rels = {list(self.power_ema.sigma_rels)}")

    def gathered(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full CPU tensors in the MUG-V layout of `tensors` named like the parameters (EMA averages,
        LoRA factors). A collective that every rank calls; the main rank gets the result."""
        return self.runtime.gather(self.trained, tensors)

    def save_checkpoint(self) -> Path:
        """Write this step's checkpoint (DCP: every rank its shards; see mugv.distributed.checkpoint)."""
        from mugv.distributed.checkpoint import save_distributed

        runtime = self.runtime
        meta = {"scheduler": self.schedule_state(), "data": self.data.state_dict(), "config": to_dict(self.cfg),
                "world_size": runtime.world_size, "dp_size": runtime.dims.dp}
        path, _ = save_distributed(self.cfg.checkpoint_dir, self.step, self.trained, self.optimizer, meta,
                                   self.generator.get_state(), self.cfg.checkpoint.keep_last,
                                   dp_rank=runtime.dp_rank, dp_leader=runtime.dp_leader, tensors=self.ema_tensors())
        return path

    def resume(self) -> Path | None:
        """Continue from the checkpoint that `checkpoint.resume` names; None when starting fresh.
        A checkpoint written at any world size and parallel layout loads here (DCP reshards)."""
        from mugv.distributed.checkpoint import load_distributed, read_checkpoint_meta

        choice = self.cfg.checkpoint.resume
        if choice == "none":
            return None
        path = latest_checkpoint(self.cfg.checkpoint_dir) if choice == "auto" else Path(choice)
        if path is None:
            return None
        if not path.is_dir():
            raise CheckpointError(f"checkpoint.resume = {choice!r}: no checkpoint directory at {path}")
        if not (path / ".metadata").is_file() and (path / "model.safetensors").is_file():
            raise CheckpointError(f"{path} is a checkpoint of an older mugv (model.safetensors, optimizer.pt), which "
                                  "cannot resume exactly; start from its weights with "
                                  f"--checkpoint.init_weights={path / 'model.safetensors'}")
        saved_config = read_checkpoint_meta(path).get("config", {})  # checked before any tensor is read
        saved_model = saved_config.get("model")
        if saved_model is not None and saved_model != to_dict(self.cfg.model):
            changed = sorted(k for k in saved_model if saved_model[k] != to_dict(self.cfg.model).get(k))
            raise CheckpointError(f"checkpoint {path} was trained with different model settings: {', '.join(changed)}")
        self.check_power_ema_widths(saved_config, path)
        dp_size = self.runtime.dims.dp
        meta, generator = load_distributed(path, self.trained, self.optimizer, dp_rank=self.runtime.dp_rank,
                                           tensors=self.ema_tensors())
        if self.power_ema is not None:
            self.power_ema.t = int(meta["step"])
        self.load_schedule_state(meta["scheduler"])
        self.data.load_state_dict(meta["data"])
        if generator is not None and meta.get("dp_size") == dp_size:  # same data-parallel size: exact
            self.generator.set_state(generator)
        else:  # another data-parallel size: the noise streams restart from the seed, offset by the step
            self.generator.manual_seed(restart_seed(self.generator.initial_seed(), int(meta["step"])))
        self.step = int(meta["step"])
        return path

    # ----------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.use_bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def apply_stage(self) -> StageSettings:
        """Set this step's learning rate, conditioning masks and data mixture from the curriculum."""
        settings = self.curriculum.settings(self.step, self.samples_seen)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.optim.lr * settings.lr_scale
        self.objective.policy = settings.policy
        if settings.buckets and not hasattr(self.data, "set_buckets"):
            raise ConfigError(f"stage '{settings.name}' sets buckets, which data.source = "
                              f"{self.cfg.data.source!r} cannot restrict")
        if hasattr(self.data, "set_buckets") and settings.buckets != self._buckets:
            self.data.set_buckets(settings.buckets or None)
            self._buckets = settings.buckets
        if settings.image_fraction is not None and hasattr(self.data, "set_mixture"):
            fraction = round(settings.image_fraction, 2)  # re-plan the data only when the mix really moves
            if fraction != self._image_fraction:
                self.data.set_mixture(image_fraction=fraction)
                self._image_fraction = fraction
        return settings

    def train_step(self, batch: LatentBatch) -> dict[str, float]:
        self.model.train()
        batch = batch.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        # the backward runs inside too: activation checkpointing recomputes attention there
        with attention_backend(self.cfg.train.attention_backend, self.device):
            loss, objective_metrics = self.runtime.forward_backward(self.objective, self.model, batch, self.generator,
                                                                    self.reference, self.autocast)
        grad_norm = self.runtime.finish_gradients(self.model, self.cfg.optim.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model)
        if self.power_ema is not None:
            self.power_ema.update(self.model)
        return {"loss": self.runtime.mean_over_dp(loss), "grad_norm": grad_norm.item(), "lr": lr, **objective_metrics}

    def fit(self) -> list[dict[str, float]]:
        """Train through the curriculum (at most `train.steps`), checkpointing as configured;
        returns every step's metrics."""
        cfg = self.cfg
        run_dir = cfg.resolved_run_dir
        main = self.runtime.is_main
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.toml").write_text(to_toml(cfg))
        resumed = self.resume()
        history: list[dict[str, float]] = []
        hooks = list(self.hooks)
        if main and cfg.sampling.every_steps:
            hooks.append(build_sample_renderer(cfg, self.model, self.device))
        validation = self.validation_batches() if cfg.validation.every_steps else []
        if main:
            run_logger = RunLogger(run_dir, cfg.logging, total_steps=cfg.train.steps, start_step=self.step)
        else:  # only the main rank logs
            from mugv.distributed.runtime import SilentLogger

            run_logger = SilentLogger()
        with run_logger as logger:
            if resumed is not None:
                logger.message(f"resumed from {resumed} at step {self.step} (stage '{self.curriculum.stage.name}')"
                               if not self.curriculum.finished else f"resumed from {resumed}: curriculum finished")
            if validation and self.step == 0:  # the starting point, e.g. of a fine-tune
                start = self.validate(validation)
                logger.message(f"validation loss before training: {start['val/loss']:.4f}")
                if main:
                    (run_dir / "validation-start.json").write_text(json.dumps(start, indent=2))
            logger.message(describe_backend(cfg.train.attention_backend, self.device))
            while self.step < cfg.train.steps and not self.curriculum.finished:
                self.apply_stage()
                wait_start = time.perf_counter()
                batch = self.data.next_batch()
                step_start = time.perf_counter()
                metrics = self.train_step(batch)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                step_end = time.perf_counter()
                self.samples_seen += batch.size * self.runtime.dims.dp
                metrics.update(self.throughput(batch, step_end - wait_start, step_start - wait_start))
                metrics["step"] = self.step
                metrics["stage"] = self.curriculum.index
                if validation and self.step % cfg.validation.every_steps == 0:
                    metrics.update(self.validate(validation))
                    self.curriculum.record_validation(metrics["val/loss"])
                history.append(metrics)
                logger.log(self.step, metrics)
                for hook in hooks:
                    hook.on_step_end(self, metrics)
                if self.power_ema is not None and self.step % cfg.ema.snapshot_every == 0:
                    self.power_ema.snapshot(run_dir / "ema-snapshots" if main else None, gather=self.gathered)
                if self.curriculum.stage_done(self.step, self.samples_seen):
                    if cfg.stages:
                        logger.message(f"stage '{self.curriculum.stage.name}' done at step {self.step}")
                    self.curriculum.advance(self.step, self.samples_seen)
                every = cfg.checkpoint.every_steps
                last = self.step == cfg.train.steps or self.curriculum.finished
                if (every and self.step % every == 0) or last:
                    logger.sync()  # the metrics of every step up to the checkpoint are on disk first
                    logger.message(f"saved {self.save_checkpoint()}")
            self.export_final(run_dir, write=main)
            logger.finish()
        return history

    def validate(self, batches: list[LatentBatch]) -> dict[str, float]:
        cfg = self.cfg
        return validation_loss(self.model, batches, sigmas=cfg.validation.sigmas,
                               num_train_timesteps=cfg.flow.num_train_timesteps, seed=cfg.train.seed,
                               device=self.device)

    def validation_batches(self) -> list[LatentBatch]:
        """The fixed held-out batches: `validation.shards`, or a synthetic pool the run never trains on."""
        v, cfg = self.cfg.validation, self.cfg
        if v.shards:
            held_out = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source="shards", shards=v.shards,
                                                                         prefetch=0, image_fraction=-1.0))
            source = build_data_source(held_out)
        elif cfg.data.source == "synthetic":
            source = SyntheticLatents(cfg.data, cfg.model.in_channels, cfg.model.text_dim, seed=held_out_seed(cfg.train.seed))
        else:
            raise ConfigError("validation.shards must name a held-out shard set when training from shards")
        return [source.next_batch() for _ in range(v.batches)]

    def export_final(self, run_dir: Path, write: bool = True) -> None:
        """Weights a user takes away: the EMA weights and the LoRA adapter (with the modules
        `lora.train_modules` trains in full), as full safetensors (the adapter also in the PEFT
        layout, `lora-peft/`).
        Every rank takes part in gathering them; only the one with `write` writes."""
        if self.ema is not None:
            shadow = self.gathered(self.ema.state_dict())
            if write:
                save_safetensors(shadow, run_dir / "ema.safetensors", {"decay": str(self.cfg.ema.decay)})
        if self.cfg.lora.rank:
            adapter = self.gathered(lora_state_dict(self.model))
            if write:
                save_safetensors(adapter, run_dir / "lora.safetensors", {
                    "rank": str(self.cfg.lora.rank), "alpha": str(self.cfg.lora.alpha),
                    "targets": ",".join(self.cfg.lora.targets),
                    "train_modules": ",".join(self.cfg.lora.train_modules)})
                save_peft_adapter(run_dir / "lora-peft", adapter, self.cfg.lora,
                                  base_model=self.cfg.checkpoint.init_weights or None)

    def throughput(self, batch: LatentBatch, step_seconds: float, data_seconds: float) -> dict[str, float]:
        flops = batch_train_flops(self.cfg.model, batch) / self.runtime.ranks_per_replica  # this rank's share
        tflops = flops / step_seconds / 1e12
        out = {
            "step_time": step_seconds,
            "data_wait": data_seconds / step_seconds,
            "samples_per_s": batch.size * self.runtime.dims.dp / step_seconds,
            "tflops": tflops,
            "memory_gib": peak_memory_gib(self.device),
        }
        if self.peak_tflops:
            out["mfu"] = tflops / self.peak_tflops
        return out
