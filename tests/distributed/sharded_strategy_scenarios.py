"""Training-strategy scenarios under FSDP2 (run on every rank by the harness): online and
power-function EMA, LoRA, and `Trainer` runs whose checkpoints and exports the tests compare
with single-process runs.

Harness-level scenarios train like `dist_scenarios.parity` (fixed global batches, each
data-parallel rank its slice) and return rank 0's view of full tensors; the `Trainer` ones run
the real training loop under the torchrun-style environment the harness sets.
"""

from __future__ import annotations

import functools
from pathlib import Path

import dist_scenarios as sc
import torch

from mugv.config import LoRAConfig
from mugv.distributed.checkpoint import full_tensors
from mugv.train.ema import EMA, PowerEMA
from mugv.train.lora import apply_lora, lora_state_dict

EMA_DECAY = 0.9
SIGMA_RELS = (0.05, 0.10)
LORA = LoRAConfig(rank=2, alpha=4.0)
GOLDEN = str(Path(__file__).resolve().parents[1] / "golden" / "dit_debug_mugv_weights.safetensors")
# from trained-looking weights: a fresh model's zero-initialised tensors take Adam steps whose
# size, where a gradient is near Adam's eps, magnifies rounding differences between layouts
EMA_OVERRIDES = (f"--ema.decay={EMA_DECAY}", f"--ema.power_sigma_rels={list(SIGMA_RELS)}", "--ema.snapshot_every=2",
                 f"--checkpoint.init_weights={GOLDEN}")
# LoRA's B factors start at zero, so Adam's first steps are normalised gradients of elements
# whose gradient can be tiny (near Adam's eps), where rounding differences between layouts are
# magnified: the factors agree to 5e-3 (max |a - b| / max |b|), the losses to 1e-5
LORA_TOLERANCE = 5e-3
LORA_OVERRIDES = ("--lora.rank=2", "--lora.alpha=4.0", f"--checkpoint.init_weights={GOLDEN}")


def _averages(model, snapshot_dir: Path | None, after_training) -> dict:
    """Track an EMA and power-function averages of `model` through `after_training(update)`,
    snapshot the latter into `snapshot_dir`; return both gathered to full tensors."""
    ema, power = EMA(model, EMA_DECAY), PowerEMA(model, SIGMA_RELS)

    def update(m):
        ema.update(m)
        power.update(m)

    result = after_training(update)
    main = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    gather = functools.partial(full_tensors, model, keep=main)
    power.snapshot(snapshot_dir if main else None, gather=gather)
    local = sum(t.to_local().numel() if hasattr(t, "to_local") else t.numel() for t in ema.shadow.values())
    return {**result, "ema": gather(ema.state_dict()), "power": [gather(a) for a in power.averages],
            "local_fraction": local / sum(p.numel() for p in ema.shadow.values())}


def ema_parity(rank: int, world: int, parallel: dict, snapshot_dir: str, steps: int = 3) -> dict:
    """Parity training with the averages updated after every step, each rank on its own shards."""
    model, plan = sc.build_parallel(world, parallel)
    return _averages(model, Path(snapshot_dir),
                     lambda update: sc.train_parallel(model, plan, steps, after_step=update)[0])


def ema_reference(snapshot_dir: str, steps: int = 3) -> dict:
    model = sc.make_model(sc.model_config())
    return _averages(model, Path(snapshot_dir), lambda update: sc.reference_run(steps, model=model, after_step=update))


def _sharded(tensors: dict) -> bool:
    """Whether every tensor is a DTensor of which this rank holds only a part."""
    return all(hasattr(t, "to_local") and t.to_local().numel() < t.numel() for t in tensors.values())


def lora_model():
    model = sc.make_model(sc.model_config())
    apply_lora(model, LORA)
    return model


def lora_parity(rank: int, world: int, parallel: dict, steps: int = 3) -> dict:
    """Parity training of LoRA factors on a frozen (sharded) base."""
    model, plan = sc.build_parallel(world, parallel, model=lora_model())
    result, opt = sc.train_parallel(model, plan, steps)
    trained = {id(p) for group in opt.param_groups for p in group["params"]}
    return {**result, "lora": full_tensors(model, lora_state_dict(model), keep=rank == 0),
            "optimized": sorted(n for n, p in model.named_parameters() if id(p) in trained),
            "lora_sharded": _sharded(lora_state_dict(model))}


def lora_reference(steps: int = 3) -> dict:
    model = lora_model()
    return {**sc.reference_run(steps, model=model), "lora": lora_state_dict(model)}


class CrashAtStep3:  # after the step-2 checkpoint: step 3 is lost and redone
    def on_step_end(self, trainer, metrics):
        if trainer.step == 3:
            raise KeyboardInterrupt


def trainer_ema(rank: int, world: int, parallel: dict, run_dir: str) -> dict:
    """`Trainer` with EMA and power-EMA snapshots: 4 steps straight, and a run stopped after the
    step-2 DCP checkpoint and resumed; returns the losses and both runs' final averages."""
    from mugv.train.trainer import Trainer

    def cfg(name):
        return sc.trainer_config(run_dir, name, 4, parallel, EMA_OVERRIDES)

    straight_trainer = Trainer(cfg("straight"))
    straight = straight_trainer.fit()
    try:
        Trainer(cfg("resumed"), hooks=(CrashAtStep3(),)).fit()
    except KeyboardInterrupt:
        pass
    resumed_trainer = Trainer(cfg("resumed"))
    resumed = resumed_trainer.fit()
    return {"straight": [m["loss"] for m in straight], "resumed": [m["loss"] for m in resumed],
            "ema": [t.gathered(t.ema.state_dict()) for t in (straight_trainer, resumed_trainer)],
            "power": [[t.gathered(a) for a in t.power_ema.averages] for t in (straight_trainer, resumed_trainer)]}


def trainer_ema_resumed_from(rank: int, world: int, parallel: dict, run_dir: str, checkpoint: str) -> dict:
    """`Trainer` in another layout resuming `trainer_ema`'s step-2 checkpoint: the averages as
    loaded, and after running on to step 4."""
    from mugv.train.trainer import Trainer

    cfg = sc.trainer_config(run_dir, "elsewhere", 4, parallel, EMA_OVERRIDES)
    cfg.checkpoint.resume = checkpoint
    loading = Trainer(cfg)
    loading.resume()
    trainer = Trainer(cfg)
    losses = [m["loss"] for m in trainer.fit()]
    return {"loaded": loading.gathered(loading.ema.state_dict()), "power_t": loading.power_ema.t,
            "losses": losses, "ema": trainer.gathered(trainer.ema.state_dict())}


def trainer_lora(rank: int, world: int, parallel: dict, run_dir: str) -> dict:
    """`Trainer` fine-tuning LoRA factors: what the optimizer holds, and how the factors are stored."""
    from mugv.train.trainer import Trainer

    trainer = Trainer(sc.trainer_config(run_dir, "lora", 2, parallel, LORA_OVERRIDES))
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    optimized = sorted(names[id(p)] for group in trainer.optimizer.param_groups for p in group["params"])
    losses = [m["loss"] for m in trainer.fit()]
    return {"losses": losses, "optimized": optimized, "sharded": _sharded(lora_state_dict(trainer.model))}


def trainer_two_steps(rank: int, world: int, parallel: dict, run_dir: str, name: str) -> dict:
    """`Trainer` with an online EMA for 2 steps from trained-looking weights, checkpointing at step 2."""
    from mugv.train.trainer import Trainer

    cfg = sc.trainer_config(run_dir, name, 2, parallel, (f"--ema.decay={EMA_DECAY}", f"--checkpoint.init_weights={GOLDEN}"))
    return {"losses": [m["loss"] for m in Trainer(cfg).fit()]}


def trainer_error(rank: int, world: int, parallel: dict, run_dir: str, overrides: tuple[str, ...]) -> str:
    """The message of the ConfigError a `Trainer` with `overrides` raises in this layout."""
    from mugv.config import ConfigError
    from mugv.train.trainer import Trainer

    try:
        Trainer(sc.trainer_config(run_dir, "refused", 2, parallel, overrides))
    except ConfigError as error:
        return str(error)
    return "no error"
