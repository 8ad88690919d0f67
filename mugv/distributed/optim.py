"""AdamW on the fastest implementation the parameter layout allows.

torch's multi-tensor (`foreach`) and fused AdamW update a whole parameter group in one kernel
per operation, which needs every tensor of the group in one layout: plain tensors together, or
DTensors on one device mesh. Sharded models mix meshes (FSDP x TP: the blocks' parameters live
on the 2-D dp x tp mesh, the embedders' on the dp mesh only), so each parameter group is split
into one group per mesh, with the same settings; the checkpoint stores the groups merged back
(mugv.distributed.checkpoint.optimizer_state), so they do not depend on the layout.
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor

from mugv.config import OptimConfig


def _mesh_of(param: torch.Tensor):
    return param.device_mesh if isinstance(param, DTensor) else None


def split_by_mesh(groups: list[dict]) -> list[dict]:
    """Each parameter group as one group per device mesh (plain tensors: one group of their own),
    keeping its settings and the parameters' order; empty groups are kept as they are."""
    out = []
    for group in groups:
        by_mesh: dict = {}
        for param in group["params"]:
            by_mesh.setdefault(_mesh_of(param), []).append(param)
        if not by_mesh:
            out.append(group)
        for params in by_mesh.values():
            out.append({**group, "params": params})
    return out


def adamw_implementation(device: torch.device) -> dict[str, bool]:
    """Fused AdamW on CUDA, the multi-tensor path elsewhere (both need one mesh per group)."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


def build_adamw(groups: list[dict], cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over `groups` (param_groups: lists of parameters with their weight decay), split by
    mesh and on the fused or multi-tensor implementation."""
    return torch.optim.AdamW(split_by_mesh(groups), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                             **adamw_implementation(device))
