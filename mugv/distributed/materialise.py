"""Start-up without a full model per rank: the model is laid out on the meta device, then filled
from rank 0.

Under torchrun only global rank 0 builds the whole model with its values, in host memory (the same
seed, initialisation and `checkpoint.init_weights` as one process, so the values are bit-identical);
every rank, rank 0 included, builds the model to train on the meta device (shapes, no memory) and
parallelizes it (TP / CP / FSDP2, or keeps only its pipeline stages). `materialise` then gives
each kept tensor this rank's memory (`to_empty`) and `broadcast_values` fills it: rank 0 sends one
full tensor at a time, every rank copies its shard of it (FSDP2 / tensor-parallel rows permuted
into rank blocks) into each of its tensors of that name and drops the rest. So no rank but 0 ever
holds more than one full tensor, and rank 0 never copies the whole model to its device.

Buffers are sent like parameters (the non-persistent ones too), so every table is rank 0's.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import nn

from mugv.distributed.checkpoint import copy_canonical, model_tensors
from mugv.distributed.tensor_parallel import head_blocked_parameters
from mugv.errors import MugvError
from mugv.utils.progress import track


@torch.no_grad()
def broadcast_values(source: Mapping[str, torch.Tensor] | None, modules: list[nn.Module], device: torch.device,
                     progress: bool = False) -> None:
    """Fill every tensor of `modules` (parallelized, materialised by `to_empty`) from
    `source`, the full CPU tensors of global rank 0 (None elsewhere), sent one at a time over
    `device` (the process group's transport: the GPU for NCCL, the CPU for gloo). A collective
    every rank calls; `progress`: a bar over the tensors sent. Raises when a target tensor got no
    value."""
    names = [(name, tuple(t.shape), t.dtype) for name, t in source.items()] if dist.get_rank() == 0 else None
    box = [names]
    dist.broadcast_object_list(box, src=0)
    owned = [(model_tensors(module), head_blocked_parameters(module)) for module in modules]
    filled: set[int] = set()
    for name, shape, dtype in track(box[0], desc="sending the initial weights", unit="tensor", enabled=progress):
        if dist.get_rank() == 0:
            value = source[name].detach().to(device)
        else:
            value = torch.empty(shape, dtype=dtype, device=device)
        dist.broadcast(value, src=0)
        for tensors, blocked in owned:
            if name in tensors:
                copy_canonical(tensors[name], value, blocked.get(name))
                filled.add(id(tensors[name]))
    missing = sorted({name for tensors, _ in owned for name, t in tensors.items() if id(t) not in filled})
    if missing:
        raise MugvError(f"rank 0's model has no tensor for {', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''}: the ranks built different models")


def materialise(targets: list[tuple[nn.Module, torch.device]], source: Mapping[str, torch.Tensor] | None,
                device: torch.device, progress: bool = False) -> None:
    """Give each target module's meta tensors memory on its device (`to_empty`: FSDP2 re-registers
    its shards), then fill them from rank 0's `source` (`broadcast_values`)."""
    for module, where in targets:
        module.to_empty(device=where)
    broadcast_values(source, [module for module, _ in targets], device, progress)


def share_rng_state() -> None:
    """Every rank continues from rank 0's CPU generator, as when each built the model itself (the
    same draws from the same seed): only rank 0 drew the initial values now."""
    state = torch.random.get_rng_state()
    box = [state]
    dist.broadcast_object_list(box, src=0)
    torch.random.set_rng_state(box[0])
