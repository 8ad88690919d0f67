"""Scenarios for start-up on the meta device (mugv.distributed.materialise): what each rank's
`Trainer` held before sharding and after, and the weights it starts from."""

from __future__ import annotations

import dist_scenarios as sc
import preference_scenarios as ps
import torch
import torch.distributed as dist

from mugv.distributed.checkpoint import full_tensors, model_tensors
from mugv.distributed.parallelize import local_tensor
from mugv.distributed.runtime import Runtime


def trainer_start(rank: int, world: int, parallel: dict, run_dir: str, extra: tuple[str, ...] = ()) -> dict:
    """A `Trainer` made in `parallel`: on every rank, the elements of its model that were not on the
    meta device when parallelizing began, its parameters' local and full element counts after
    start-up, and what it holds of the model; on rank 0, every rank's starting weights (and EMA
    averages) gathered in the MUG-V layout."""
    from mugv.train.trainer import Trainer

    before_sharding = {}
    parallelize = Runtime.parallelize

    def recording(runtime, model):
        before_sharding["real_elements"] = sum(t.numel() for t in model_tensors(model).values() if not t.is_meta)
        return parallelize(runtime, model)

    Runtime.parallelize = recording
    try:
        trainer = Trainer(sc.trainer_config(run_dir, "start", 1, parallel, extra))
    finally:
        Runtime.parallelize = parallelize
    modules = trainer.trained if isinstance(trainer.trained, list) else [trainer.trained]
    params = {n: p for m in modules for n, p in m.named_parameters()}
    tensors = {n: t for m in modules for n, t in model_tensors(m).items()}
    mine = {**before_sharding,
            "local": {n: local_tensor(p).numel() for n, p in params.items()},
            "full": {n: p.numel() for n, p in params.items()},
            "meta_left": sorted(n for n, t in tensors.items() if t.is_meta),
            "held": sorted(n for n, t in model_tensors(trainer.model).items() if not t.is_meta),
            "weights": {n: t.clone() for n, t in full_tensors(modules, tensors).items()},  # a stage's names only
            "rng": torch.random.get_rng_state()}
    ema = trainer.gathered(trainer.ema.state_dict()) if trainer.ema is not None else {}
    everyone: list = [None] * world
    dist.all_gather_object(everyone, mine)
    return {"ranks": everyone, "ema": ema}


def frozen_copy_start(rank: int, world: int, run_dir: str, offload: bool) -> dict:
    """A DPO `Trainer` with a frozen reference copy (in CPU memory with `offload`) built on the meta
    device: the copy's weights gathered, and whether its shards are on this rank's device or CPU."""
    trainer = ps.preference_trainer(run_dir, f"frozen-{world}-{offload}", "dpo", "frozen_copy", world, rank,
                                    {"dp_shard": 2} if world > 1 else {}, 1, extra_options(offload),
                                    hand_in_model=False)
    copy = trainer.reference.module
    return {"weights": {n: t.clone() for n, t in full_tensors(copy, model_tensors(copy)).items()},
            "offloaded": ps._offloaded(copy) if world > 1 else None}


def extra_options(offload: bool) -> tuple[str, ...]:
    return ("--preference.reference_offload=true",) if offload else ()
