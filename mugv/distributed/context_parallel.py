"""Context parallelism written for MUG-DiT: the token sequence split across ranks.

Layout. The sequence [start, video tokens..., end] of N tokens is padded to P, a multiple of
cp x tp, and cut into cp contiguous chunks (cp rank c = cp_ring_rank x ulysses + ulysses_rank holds
chunk c); with tensor parallel, each chunk is cut again into tp pieces (sequence parallel). The
per-token side tensors follow: the t/t0 selector like the tokens, the RoPE tables by cp chunk
(attention sees a whole cp chunk once tensor parallel has gathered it). Padding is masked out as
keys in self-attention and dropped after the final gather; no token is ever dropped.

Self-attention (`UlyssesRingAttention`, swapped into `SelfAttention.core_attention`):
  1. Ulysses: an all-to-all over the ulysses group turns (B, H, n, d) sequence-split into
     (B, H / u, u n, d) head-split;
  2. ring: over the ring group each rank's query block meets every key/value block as they are
     passed around the ring; the partial results merge exactly through their log-sum-exp
     (computed in float32);
  3. the inverse all-to-all.
Cross-attention to the text needs nothing: queries are local, the text keys are whole on every
rank.

Gradients. Every rank computes the loss over the gathered full output; the gather's backward
takes this rank's slice, so each parameter's gradient on a rank is its partial sum over the
rank's tokens, and summing over the cp (and tp) ranks gives the exact gradient (FSDP2 reduces
over dp_shard x cp; see mugv.distributed.parallelize).
"""

from __future__ import annotations

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


class _RingShift(torch.autograd.Function):
    """Send to the next rank of the ring, receive from the previous; backward goes the other way."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return _shift(x.contiguous(), group, +1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _shift(grad.contiguous(), ctx.group, -1), None


def _shift(x: torch.Tensor, group, direction: int) -> torch.Tensor:
    size = dist.get_world_size(group)
    rank = dist.get_rank(group)
    dst = dist.get_global_rank(group, (rank + direction) % size)
    src = dist.get_global_rank(group, (rank - direction) % size)
    out = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x, dst, group), dist.P2POp(dist.irecv, out, src, group)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return out


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


def _key_mask(start: int, length: int, valid: int, device) -> torch.Tensor | None:
    """Boolean (1, 1, 1, length) mask of keys at global positions start.. that are real tokens."""
    if start + length <= valid:
        return None
    return (torch.arange(start, start + length, device=device) < valid)[None, None, None]


def _block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None):
    """Float32 attention of one query block over one key block: (output, log-sum-exp)."""
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    return torch.exp(scores - lse) @ v.float(), lse


def ring_attention(q, k, v, group, block_start: int, block_len: int, valid: int) -> torch.Tensor:
    """Attention of this rank's query block over the key/value blocks of every ring rank.

    Ring rank s holds global positions [s * block_len, (s + 1) * block_len); key blocks travel
    one hop per step and results merge through their log-sum-exp (online-softmax algebra).
    """
    size = dist.get_world_size(group)
    rank = dist.get_rank(group)
    outs, lses = [], []
    kv = torch.stack([k, v])
    for step in range(size):
        source = (rank - step) % size
        start = source * block_len
        if start < valid:  # a block of only padding contributes nothing
            mask = _key_mask(start, block_len, valid, q.device)
            out, lse = _block_attention(q, kv[0], kv[1], mask)
            outs.append(out)
            lses.append(lse)
        if step < size - 1:
            kv = _RingShift.apply(kv, group)
    total = torch.logsumexp(torch.stack(lses), dim=0)
    out = sum(torch.exp(lse - total) * o for o, lse in zip(outs, lses))
    return out.to(q.dtype)


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
        block = q.shape[2]  # tokens of this ring rank's block (= u cp chunks)
        if self.r > 1:
            ring_rank = dist.get_rank(self.ring_group)
            out = ring_attention(q, k, v, self.ring_group, ring_rank * block, block, layout.valid)
        else:
            mask = _key_mask(0, block, layout.valid, q.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if self.u > 1:
            out = _heads_to_seq(out, self.ulysses_group, self.u)
        return out
