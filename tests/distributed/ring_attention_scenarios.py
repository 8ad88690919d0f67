"""Scenarios for the context-parallel attention, run on every rank by the harness.

Every rank draws the same full (padded) q, k, v and output gradient, runs its share through the
distributed attention, and gathers the output and the q, k, v gradients; rank 0 compares them
with plain float64 attention over the real keys (every query row, padding included, attends to
the real keys only) and returns the worst scale-relative errors. A TorchDispatchMode records
every op's output shape and the fused attention calls on the way.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from numerics_testing import scale_relative_error
from torch.utils._python_dispatch import TorchDispatchMode

from mugv.distributed.context_parallel import SequenceLayout, UlyssesRingAttention

BATCH, HEADS, HEAD_DIM = 2, 4, 8
CPU_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
CPU_FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default


class OpRecorder(TorchDispatchMode):
    """Every op's output shapes, and whether each fused attention call had a mask."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[str, tuple[int, ...]]] = []
        self.fused: list[tuple[str, bool]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in (CPU_FLASH, CPU_FLASH_BACKWARD):
            self.fused.append((func.overloadpacket.__name__, kwargs.get("attn_mask") is not None))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append((str(func), tuple(t.shape)))
        return out


def _full_inputs(padded: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(BATCH, HEADS, padded, HEAD_DIM, generator=g, dtype=torch.float64) for _ in range(4)]


def _reference(q, k, v, grad_out, valid: int) -> list[torch.Tensor]:
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k[:, :, :valid], v[:, :, :valid])
    out.backward(grad_out)
    return [out.detach(), q.grad, k.grad, v.grad]


def _gather(x: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=2)


def context_parallel_attention(rank: int, world: int, mode: str, valid: int, chunk: int, dtype: str = "float32",
                               autocast: bool = False, seed: int = 0) -> dict:
    """`mode` "ring" (the world is one ring) or "ulysses" (the world is one Ulysses group); every
    rank holds `chunk` tokens of the world * chunk padded sequence, of which `valid` are real."""
    padded = world * chunk
    layout = SequenceLayout(cp=world, cp_rank=rank, tp=1, tp_rank=0, valid=valid, padded=padded)
    group = dist.group.WORLD
    attention = (UlyssesRingAttention(layout, ring_group=group) if mode == "ring"
                 else UlyssesRingAttention(layout, ulysses_group=group))
    q, k, v, grad_out = _full_inputs(padded, seed)
    mine = [t[:, :, rank * chunk:(rank + 1) * chunk].to(getattr(torch, dtype)).requires_grad_() for t in (q, k, v)]
    recorder = OpRecorder()
    with recorder:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = attention(mine[0], mine[1], mine[2].to(torch.bfloat16) if autocast else mine[2])
        out.backward(grad_out[:, :, rank * chunk:(rank + 1) * chunk].to(out.dtype))
    ours = [_gather(out.detach().double())] + [_gather(t.grad.double()) for t in mine]
    expected = _reference(q, k, v, grad_out, valid)
    names = ("out", "dq", "dk", "dv")
    return {
        "errors": {name: scale_relative_error(a, b) for name, a, b in zip(names, ours, expected, strict=True)},
        "out_dtype": str(out.dtype),
        "fused": recorder.fused,
        "shapes": recorder.shapes,
    }


def ring_scenarios(world: int, dtype_cases: bool = True) -> list:
    """(name, fn, kwargs) for the harness: the ring and Ulysses cases over `world` ranks."""
    chunk = 13  # > HEAD_DIM: a (queries x keys) score block would show as (..., 13, k > 8)
    cases = {
        "ring, no padding": {"mode": "ring", "valid": world * chunk},
        "ring, last block partly padding": {"mode": "ring", "valid": world * chunk - 5},
        "ring, last block only padding": {"mode": "ring", "valid": (world - 1) * chunk - 2},
        "ulysses, padded": {"mode": "ulysses", "valid": world * chunk - 5},
    }
    if dtype_cases:
        cases["ring, bfloat16"] = {"mode": "ring", "valid": world * chunk - 5, "dtype": "bfloat16"}
        cases["ring, under bf16 autocast"] = {"mode": "ring", "valid": world * chunk - 5, "autocast": True}
    return [(name, context_parallel_attention, {"chunk": chunk, **kwargs}) for name, kwargs in cases.items()]
