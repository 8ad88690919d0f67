"""Context parallelism written for MUG-DiT: the token sequence split across ranks.

Layout. The sequence [start, video tokens..., end] of N tokens is padded to P, a multiple of
cp x tp, and cut into cp contiguous chunks (cp rank c = cp_ring_rank x ulysses + ulysses_rank holds
chunk c); with tensor parallel, each chunk is cut again into tp pieces (sequence parallel). The
per-token side tensors follow: the t/t0 selector like the tokens, the RoPE tables by cp chunk
(attention sees a whole cp chunk once tensor parallel has gathered it). Padding is cut off the
keys in self-attention (never masked: a mask would rule out the flash kernels) and dropped after
the final gather; no token is ever dropped.

Self-attention (`UlyssesRingAttention`, swapped into `SelfAttention.core_attention`):
  1. Ulysses: an all-to-all over the ulysses group turns (B, H, n, d) sequence-split into
     (B, H / u, u n, d) head-split;
  2. ring: over the ring group each rank's query block meets every key/value block as they are
     passed around the ring, each pair through a fused SDPA kernel that also returns the
     log-sum-exp; the partial results merge exactly through it (in float32). See `_RingAttention`;
  3. the inverse all-to-all.
Cross-attention to the text needs nothing: queries are local, the text keys are whole on every
rank.

Gradients. Every rank computes the loss over the gathered full output; the gather's backward
takes this rank's slice, so each parameter's gradient on a rank is its partial sum over the
rank's tokens, and summing over the cp (and tp) ranks gives the exact gradient (FSDP2 reduces
over dp_shard x cp; see mugv.distributed.parallelize).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mugv.models.dit.model import DiTInputs

# ----------------------------------------------------------------------------------------------
# Differentiable communication
# ----------------------------------------------------------------------------------------------


class _AllToAll(torch.autograd.Function):
    """all_to_all_single along dim 0 (equal splits); backward is the same exchange."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        x = x.contiguous()
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        dist.all_to_all_single(out, grad, group=ctx.group)
        return out, None


class _Transfer:
    """A ring hop in flight: `wait()` returns the tensor received from the previous rank."""

    def __init__(self, x: torch.Tensor, group):
        size, rank = dist.get_world_size(group), dist.get_rank(group)
        self.received = torch.empty_like(x)
        self.sent = x  # kept alive until the send completes
        self.requests = dist.batch_isend_irecv([
            dist.P2POp(dist.isend, x, dist.get_global_rank(group, (rank + 1) % size), group),
            dist.P2POp(dist.irecv, self.received, dist.get_global_rank(group, (rank - 1) % size), group),
        ])

    def wait(self) -> torch.Tensor:
        for request in self.requests:
            request.wait()
        return self.received


class _GatherSequence(torch.autograd.Function):
    """All-gather along `dim`; backward keeps this rank's slice of the (identical) full gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, group) -> torch.Tensor:
        ctx.dim, ctx.rank, ctx.size = dim, dist.get_rank(group), dist.get_world_size(group)
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(ctx.size)]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.chunk(ctx.size, dim=ctx.dim)[ctx.rank].contiguous(), None, None


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def gather_sequence(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    return _GatherSequence.apply(x, dim, group)


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    return _ScaleGrad.apply(x, scale)


# ----------------------------------------------------------------------------------------------
# Sequence layout
# ----------------------------------------------------------------------------------------------


@dataclass
class SequenceLayout:
    """How this rank's share of the token sequence is cut; `valid` is set by every forward."""

    cp: int
    cp_rank: int
    tp: int
    tp_rank: int
    valid: int = 0  # real tokens of the current forward (the rest is padding)
    padded: int = 0

    @property
    def pieces(self) -> int:
        return self.cp * self.tp

    def pad_to(self, n: int) -> int:
        return -(-n // self.pieces) * self.pieces


def _pad_along(x: torch.Tensor, dim: int, to: int, value: float | bool = 0) -> torch.Tensor:
    extra = to - x.shape[dim]
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_full(shape, value)], dim=dim)


def shard_inputs(inputs: DiTInputs, layout: SequenceLayout, plan: dict[str, int]) -> DiTInputs:
    """Pad the per-token fields of `inputs` (per `plan`) and keep this rank's slice of them."""
    n = inputs.num_tokens
    layout.valid, layout.padded = n, layout.pad_to(n)
    fine = layout.padded // layout.pieces  # tokens per (cp, tp) piece
    coarse = layout.padded // layout.cp  # tokens per cp chunk
    piece = layout.cp_rank * layout.tp + layout.tp_rank
    changes = {}
    for name, dim in plan.items():
        value = getattr(inputs, name)
        if value is None:
            continue
        if name == "rope":  # attention sees a whole cp chunk (tensor parallel gathers its pieces)
            cos, sin = (_pad_along(t, dim, layout.padded) for t in value)
            lo = layout.cp_rank * coarse
            changes[name] = (cos.narrow(dim, lo, coarse), sin.narrow(dim, lo, coarse))
        else:
            fill = True if value.dtype == torch.bool else 0
            changes[name] = _pad_along(value, dim, layout.padded, fill).narrow(dim, piece * fine, fine)
    return inputs.replace(**changes)


# ----------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FusedKernel:
    """A fused SDPA kernel pair that exposes the log-sum-exp (no mask, default scale).

    forward(q, k, v) -> (out, lse, extra): lse is (B, H, n) in float32, extra what backward needs
    besides; backward(grad_out, q, k, v, out, lse, extra) -> (dq, dk, dv).
    """

    forward: Callable
    backward: Callable


def _cpu_flash_forward(q, k, v):
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default(q, k, v)
    return out, lse, ()


def _cpu_flash_backward(grad_out, q, k, v, out, lse, extra):
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default(
        grad_out, q, k, v, out, lse, 0.0, False)


def _cuda_flash_forward(q, k, v):
    out, lse, cum_seq_q, cum_seq_k, max_q, max_k, philox_seed, philox_offset, _ = (
        torch.ops.aten._scaled_dot_product_flash_attention.default(q, k, v))
    return out, lse, (cum_seq_q, cum_seq_k, max_q, max_k, philox_seed, philox_offset)


def _cuda_flash_backward(grad_out, q, k, v, out, lse, extra):
    cum_seq_q, cum_seq_k, max_q, max_k, philox_seed, philox_offset = extra
    return torch.ops.aten._scaled_dot_product_flash_attention_backward.default(
        grad_out, q, k, v, out, lse, cum_seq_q, cum_seq_k, max_q, max_k, 0.0, False, philox_seed, philox_offset)


def _cuda_efficient_forward(q, k, v):
    out, lse, philox_seed, philox_offset = torch.ops.aten._scaled_dot_product_efficient_attention.default(
        q, k, v, None, True)
    n = q.shape[2]  # the kernel pads the log-sum-exp rows to a multiple of 32; its backward reads them
    return out, lse[..., :n], (lse[..., n:], philox_seed, philox_offset)


def _cuda_efficient_backward(grad_out, q, k, v, out, lse, extra):
    lse_tail, philox_seed, philox_offset = extra
    dq, dk, dv, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward.default(
        grad_out, q, k, v, None, out, torch.cat([lse, lse_tail], dim=-1), philox_seed, philox_offset, 0.0,
        [True, True, True, False])
    return dq, dk, dv


_CPU_FLASH = _FusedKernel(_cpu_flash_forward, _cpu_flash_backward)
_CUDA_FLASH = _FusedKernel(_cuda_flash_forward, _cuda_flash_backward)
_CUDA_EFFICIENT = _FusedKernel(_cuda_efficient_forward, _cuda_efficient_backward)

# Per device type, the kernel for a dtype (CUDA flash takes only 16-bit floats).
_FUSED_KERNELS: dict[str, Callable[[torch.dtype], _FusedKernel]] = {
    "cpu": lambda dtype: _CPU_FLASH,
    "cuda": lambda dtype: _CUDA_FLASH if dtype in (torch.float16, torch.bfloat16) else _CUDA_EFFICIENT,
}


def fused_kernel(x: torch.Tensor) -> _FusedKernel:
    if x.device.type not in _FUSED_KERNELS:
        raise ValueError(f"ring attention has no fused attention kernel for device type {x.device.type!r}")
    return _FUSED_KERNELS[x.device.type](x.dtype)


def _real_keys(source: int, block_len: int, valid: int) -> int:
    """How many of ring rank `source`'s block_len keys are real tokens (the rest is padding)."""
    return max(0, min(block_len, valid - source * block_len))


class _RingAttention(torch.autograd.Function):
    """Attention of this rank's query block over the key/value blocks of every ring rank.

    Ring rank s holds global positions [s * n, (s + 1) * n). Forward: the key/value blocks travel
    one hop per step (the next hop is in flight while this one is computed), each block goes
    through the fused kernel, and the outputs merge through their log-sum-exp in float32 (online
    softmax). Backward (as in ring flash attention): the fused backward of each block, given the
    merged output and log-sum-exp, yields the exact dq share and that block's exact dk, dv; the
    key/value blocks travel the ring again, each with a float32 dk, dv accumulator that ends
    back at the block's owner. The sums always run in ring order, so the result is deterministic.
    Keys past the real tokens are cut off; a block of only padding is skipped.
    """

    @staticmethod
    def forward(ctx, q, k, v, group, valid: int):
        kernel = fused_kernel(q)
        size, rank, n = dist.get_world_size(group), dist.get_rank(group), q.shape[2]
        kv = torch.stack([k, v])  # one message per hop
        out = lse = None
        extras = []
        for step in range(size):
            hop = _Transfer(kv, group) if step < size - 1 else None
            keys = _real_keys((rank - step) % size, n, valid)
            extra = None
            if keys:
                block_out, block_lse, extra = kernel.forward(q, kv[0, :, :, :keys], kv[1, :, :, :keys])
                out, lse = _merge(out, lse, block_out, block_lse)
            extras.append(extra)
            if hop is not None:
                kv = hop.wait()
        out = out.to(q.dtype)
        lse = lse.contiguous()
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.group, ctx.valid, ctx.kernel, ctx.extras = group, valid, kernel, extras
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        group, kernel = ctx.group, ctx.kernel
        size, rank, n = dist.get_world_size(group), dist.get_rank(group), q.shape[2]
        grad_out = grad_out.contiguous()
        dq = torch.zeros_like(q, dtype=torch.float32)
        kv = torch.stack([k, v])
        dkv = torch.zeros_like(kv, dtype=torch.float32)  # dk, dv of the block held: they travel together
        accumulator_hop = None
        for step in range(size):
            kv_hop = _Transfer(kv, group) if step < size - 1 else None
            keys = _real_keys((rank - step) % size, n, ctx.valid)
            if keys:
                dq_block, dk_block, dv_block = kernel.backward(
                    grad_out, q, kv[0, :, :, :keys], kv[1, :, :, :keys], out, lse, ctx.extras[step])
                dq += dq_block
            if accumulator_hop is not None:
                dkv = accumulator_hop.wait()
            if keys:
                dkv[0, :, :, :keys] += dk_block
                dkv[1, :, :, :keys] += dv_block
            accumulator_hop = _Transfer(dkv, group)
            if kv_hop is not None:
                kv = kv_hop.wait()
        dkv = accumulator_hop.wait()  # after `size` hops, this rank's own block with every rank's share
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None


def _merge(out, lse, block_out, block_lse):
    """Online softmax: the (output, log-sum-exp) of two disjoint key sets' attention, in float32."""
    block_out, block_lse = block_out.float(), block_lse.float()
    if out is None:
        return block_out, block_lse
    merged = torch.logaddexp(lse, block_lse)
    return (out * torch.exp(lse - merged).unsqueeze(-1)
            + block_out * torch.exp(block_lse - merged).unsqueeze(-1)), merged


def _attention_dtype(q: torch.Tensor) -> torch.dtype:
    """The dtype SDPA would compute in: autocast's when it is on (q, k arrive in float32 from RoPE)."""
    if torch.is_autocast_enabled(q.device.type):
        return torch.get_autocast_dtype(q.device.type)
    return q.dtype


# Eager between compiled regions: the ring's loop and point-to-point ops would otherwise split
# into many small graphs, recompiled for every sequence length.
@torch.compiler.disable
def ring_attention(q, k, v, group, valid: int) -> torch.Tensor:
    """Attention over the ring: (B, H, n, d) blocks, ring rank s at global positions [s n, (s + 1) n).

    `valid` is the count of real tokens; the keys past it are padding.
    """
    dtype = _attention_dtype(q)
    return _RingAttention.apply(q.to(dtype), k.to(dtype), v.to(dtype), group, valid)


def _seq_to_heads(x: torch.Tensor, group, u: int) -> torch.Tensor:
    """(B, H, n, d) sequence-split -> (B, H / u, u n, d) head-split, over the ulysses group."""
    b, h, n, d = x.shape
    x = x.reshape(b, u, h // u, n, d).transpose(0, 1)  # (u, B, H/u, n, d): piece j goes to rank j
    x = _AllToAll.apply(x, group)  # (u, B, H/u, n, d): piece j came from rank j (its sequence chunk)
    return x.permute(1, 2, 0, 3, 4).reshape(b, h // u, u * n, d)


def _heads_to_seq(x: torch.Tensor, group, u: int) -> torch.Tensor:
    b, hu, un, d = x.shape
    n = un // u
    x = x.reshape(b, hu, u, n, d).permute(2, 0, 1, 3, 4)  # (u, B, H/u, n, d): chunk j goes to rank j
    x = _AllToAll.apply(x, group)  # piece j came from rank j (its heads)
    return x.transpose(0, 1).reshape(b, u * hu, n, d)


class UlyssesRingAttention:
    """Core self-attention over a context-parallel (and/or padded) sequence.

    q, k, v arrive as (B, heads, n, d) for this rank's cp chunk of n = padded / cp tokens.
    """

    def __init__(self, layout: SequenceLayout, ulysses_group=None, ring_group=None):
        self.layout = layout
        self.ulysses_group = ulysses_group
        self.ring_group = ring_group
        self.u = dist.get_world_size(ulysses_group) if ulysses_group is not None else 1
        self.r = dist.get_world_size(ring_group) if ring_group is not None else 1

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        layout = self.layout
        if q.shape[1] % self.u:
            raise ValueError(
                f"{q.shape[1]} local attention heads cannot be split over the Ulysses degree {self.u}"
            )
        if self.u > 1:
            q, k, v = (_seq_to_heads(t, self.ulysses_group, self.u) for t in (q, k, v))
        if self.r > 1:  # each ring rank's block is u cp chunks, in ring order
            out = ring_attention(q, k, v, self.ring_group, layout.valid)
        else:  # the keys past the real tokens are padding: cut off, so no mask keeps flash out
            out = F.scaled_dot_product_attention(q, k[:, :, : layout.valid], v[:, :, : layout.valid])
        if self.u > 1:
            out = _heads_to_seq(out, self.ulysses_group, self.u)
        return out
