"""Preference training (Flow-DPO, Flow-KTO) through the `Trainer`, run the same way on every rank
of the gloo harness and in one process, for the N-rank vs 1-rank parity tests.

Each data-parallel rank takes its `batch_size` samples of each global batch (a pair is one
sample: SyntheticPreferences with dp_rank / dp_size), and every sample carries its noise seed, so
the 2-rank run sees the global batches of the 1-rank run with twice the batch size, drawn alike.
"""

from __future__ import annotations

import dist_scenarios as sc
import torch

from mugv.data.preference import SyntheticPreferences
from mugv.distributed.checkpoint import full_state_dict, full_tensors

LORA = ("--lora.rank=2", "--lora.alpha=4.0")
BATCH_PER_RANK = 2  # KTO: one desirable and one undesirable sample per rank (labels alternate)


def preference_trainer(run_dir: str, name: str, objective: str, reference: str, world: int, dp_rank: int,
                       parallel: dict, steps: int, extra: tuple[str, ...] = (), hand_in_model: bool = True):
    """A Trainer of `objective` with `reference` ("adapters_off": LoRA; "frozen_copy": full weights)
    from trained-looking weights (`hand_in_model`; else the ones it builds itself), on this rank's
    part of the synthetic preference data."""
    from mugv.train.trainer import Trainer

    # KTO: desirable samples weigh 3x, so that the rewards grow and the reference point z leaves 0
    overrides = (f"--train.objective={objective}", f"--preference.reference={reference}", "--preference.beta=500",
                 "--preference.sft_weight=0.1", "--preference.lambda_d=3", "--optim.lr=1e-3",
                 "--checkpoint.every_steps=0",
                 "--data.latent_frames=2", "--data.latent_height=4", "--data.latent_width=4",
                 f"--data.batch_size={BATCH_PER_RANK * (2 if world == 1 else 1)}",
                 *(LORA if reference == "adapters_off" else ()), *extra)
    cfg = sc.trainer_config(run_dir, name, steps, parallel, overrides)
    data = SyntheticPreferences(cfg.data, cfg.model.in_channels, cfg.model.text_dim, paired=objective == "dpo",
                                dp_rank=dp_rank, dp_size=1 if world == 1 else 2)
    return Trainer(cfg, model=sc.make_model(cfg.model) if hand_in_model else None, data=data)


class FirstGradients:
    """Keeps the full (gathered) gradients of the first step, as the optimizer used them."""

    def __init__(self):
        self.grads = None

    def on_step_end(self, trainer, metrics):
        if trainer.step == 1:
            grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None}
            self.grads = full_tensors(trainer.model, grads)


def preference_run(rank: int, world: int, objective: str, reference: str, run_dir: str, parallel: dict | None = None,
                   steps: int = 3, offload: bool = False) -> dict:
    """Train `steps` steps; the per-step metrics, the first step's gradients, the final weights, and
    whether the model and a frozen reference copy are sharded (and the copy's shards in CPU memory)."""
    trainer = preference_trainer(run_dir, f"{objective}-{reference}-{world}{'-offload' * offload}", objective,
                                 reference, world, rank, parallel or {}, steps,
                                 ("--preference.reference_offload=true",) if offload else ())
    first = FirstGradients()
    trainer.hooks = (first,)
    history = trainer.fit()
    copy = trainer.reference.module if trainer.reference.separate else None
    return {
        "history": history, "grads": first.grads, "weights": full_state_dict(trainer.model),
        "sharded": all(_sharded(p) for p in trainer.model.parameters() if p.ndim == 2),
        "reference_sharded": copy is not None and all(_sharded(p) for p in copy.parameters() if p.ndim == 2),
        "reference_offloaded": copy is not None and _offloaded(copy),
    }


def _offloaded(module: torch.nn.Module) -> bool:
    """Whether FSDP2 keeps every shard of `module` in CPU memory (CPUOffloadPolicy)."""
    groups = [m._get_fsdp_state()._fsdp_param_group for m in module.modules() if hasattr(m, "_get_fsdp_state")]
    params = [p for group in groups if group is not None for p in group.fsdp_params]
    return bool(params) and all(p.offload_to_cpu and p.sharded_param.device.type == "cpu" for p in params)


def _sharded(p: torch.Tensor) -> bool:
    return hasattr(p, "to_local") and p.to_local().numel() < p.numel()
