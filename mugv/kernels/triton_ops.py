"""Triton kernels for MUG-DiT's elementwise chains, forward and backward.

Each op computes in float32 and rounds once to the output dtype, where the eager chain rounds
after every step. Reductions over tokens (the gradients of the modulation rows and of the RMSNorm
weight) are written as per-block partial sums and added by torch in a fixed order, so the
backward is deterministic (no atomics).

On a machine without a GPU these run under Triton's interpreter (`TRITON_INTERPRET=1`), which is
how the tests compare them with mugv.kernels.reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Tokens per program and tokens per inner step: enough work per program to hide launch cost,
# few enough partial-sum rows that the final torch reduction stays small.
TOKENS_PER_STEP = 16
STEPS_PER_PROGRAM = 4
HIDDEN_BLOCK = 128


@triton.jit
def _affine_select_fwd(
    X, RES, SCALE, SHIFT, SCALE0, SHIFT0, SEL, OUT, N, H,
    ONE_PLUS: tl.constexpr, HAS_RES: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_SELECT: tl.constexpr,
    BLOCK_N: tl.constexpr, STEPS: tl.constexpr, BLOCK_H: tl.constexpr,
):
    b = tl.program_id(0)
    cols = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_ok = cols < H
    scale = tl.load(SCALE + b * H + cols, mask=col_ok, other=0.0).to(tl.float32)
    if HAS_SHIFT:
        shift = tl.load(SHIFT + b * H + cols, mask=col_ok, other=0.0).to(tl.float32)
    if HAS_SELECT:
        scale0 = tl.load(SCALE0 + b * H + cols, mask=col_ok, other=0.0).to(tl.float32)
        if HAS_SHIFT:
            shift0 = tl.load(SHIFT0 + b * H + cols, mask=col_ok, other=0.0).to(tl.float32)
    for step in range(STEPS):
        rows = (tl.program_id(1) * STEPS + step) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        mask = row_ok[:, None] & col_ok[None, :]
        offsets = (b * N + rows)[:, None] * H + cols[None, :]
        x = tl.load(X + offsets, mask=mask, other=0.0).to(tl.float32)
        s = scale[None, :]
        if HAS_SHIFT:
            t = shift[None, :]
        if HAS_SELECT:
            pick = tl.load(SEL + b * N + rows, mask=row_ok, other=0) != 0
            s = tl.where(pick[:, None], s, scale0[None, :])
            if HAS_SHIFT:
                t = tl.where(pick[:, None], t, shift0[None, :])
        out = x * (ONE_PLUS + s)
        if HAS_SHIFT:
            out += t
        if HAS_RES:
            out += tl.load(RES + offsets, mask=mask, other=0.0).to(tl.float32)
        tl.store(OUT + offsets, out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _affine_select_bwd(
    DOUT, X, SCALE, SCALE0, SEL, DX, PARTIAL, N, H, NUM_BLOCKS,
    ONE_PLUS: tl.constexpr, HAS_SELECT: tl.constexpr,
    BLOCK_N: tl.constexpr, STEPS: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """dX, plus per-block partial sums of dout * x and of dout for the t rows (and the t0 rows)."""
    b = tl.program_id(0)
    block = tl.program_id(1)
    cols = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_ok = cols < H
    scale = tl.load(SCALE + b * H + cols, mask=col_ok, other=0.0).to(tl.float32)
    if HAS_SELECT:
        scale0 = tl.load(SCALE0 + b * H + cols, mask=col_ok, other=0.0).to(tl.float32)
    acc_scale = tl.zeros((BLOCK_H,), tl.float32)
    acc_shift = tl.zeros((BLOCK_H,), tl.float32)
    acc_scale0 = tl.zeros((BLOCK_H,), tl.float32)
    acc_shift0 = tl.zeros((BLOCK_H,), tl.float32)
    for step in range(STEPS):
        rows = (block * STEPS + step) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        mask = row_ok[:, None] & col_ok[None, :]
        offsets = (b * N + rows)[:, None] * H + cols[None, :]
        g = tl.load(DOUT + offsets, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(X + offsets, mask=mask, other=0.0).to(tl.float32)
        s = scale[None, :]
        if HAS_SELECT:
            pick = (tl.load(SEL + b * N + rows, mask=row_ok, other=0) != 0)[:, None]
            s = tl.where(pick, s, scale0[None, :])
            acc_scale += tl.sum(tl.where(pick, g * x, 0.0), axis=0)
            acc_shift += tl.sum(tl.where(pick, g, 0.0), axis=0)
            acc_scale0 += tl.sum(tl.where(pick, 0.0, g * x), axis=0)
            acc_shift0 += tl.sum(tl.where(pick, 0.0, g), axis=0)
        else:
            acc_scale += tl.sum(g * x, axis=0)
            acc_shift += tl.sum(g, axis=0)
        tl.store(DX + offsets, (g * (ONE_PLUS + s)).to(DX.dtype.element_ty), mask=mask)
    # PARTIAL is (4, B, NUM_BLOCKS, H): scale, shift, scale_t0, shift_t0.
    stride = tl.num_programs(0) * NUM_BLOCKS * H
    base = PARTIAL + (b * NUM_BLOCKS + block) * H + cols
    tl.store(base, acc_scale, mask=col_ok)
    tl.store(base + stride, acc_shift, mask=col_ok)
    tl.store(base + 2 * stride, acc_scale0, mask=col_ok)
    tl.store(base + 3 * stride, acc_shift0, mask=col_ok)


def _token_grid(batch: int, tokens: int, hidden: int) -> tuple[int, int, int]:
    return batch, triton.cdiv(tokens, TOKENS_PER_STEP * STEPS_PER_PROGRAM), triton.cdiv(hidden, HIDDEN_BLOCK)


def _select_bytes(select: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    if select is None:
        return x.new_empty(0, dtype=torch.uint8)
    return select.reshape(x.shape[0], x.shape[1]).to(torch.uint8).contiguous()


class _AffineSelect(torch.autograd.Function):
    """out = residual + x * (one_plus + scale[sel]) + shift[sel]; residual and shift optional."""

    @staticmethod
    def forward(ctx, x, residual, scale, shift, scale_t0, shift_t0, select, one_plus):
        x = x.contiguous()
        b, n, h = x.shape
        has_select = select is not None
        rows = [r.contiguous() if r is not None else scale for r in (scale, shift, scale_t0, shift_t0)]
        sel = _select_bytes(select, x)
        res = residual.contiguous() if residual is not None else x
        out = torch.empty_like(x)
        _affine_select_fwd[_token_grid(b, n, h)](
            x, res, *rows, sel, out, n, h,
            ONE_PLUS=one_plus, HAS_RES=residual is not None, HAS_SHIFT=shift is not None, HAS_SELECT=has_select,
            BLOCK_N=TOKENS_PER_STEP, STEPS=STEPS_PER_PROGRAM, BLOCK_H=HIDDEN_BLOCK,
        )
        ctx.save_for_backward(x, rows[0], rows[2], sel)
        ctx.flags = (residual is not None, shift is not None, has_select, one_plus)
        ctx.row_dtype = scale.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, scale, scale_t0, sel = ctx.saved_tensors
        has_res, has_shift, has_select, one_plus = ctx.flags
        grad_out = grad_out.contiguous()
        b, n, h = x.shape
        grid = _token_grid(b, n, h)
        partial = torch.empty(4, b, grid[1], h, dtype=torch.float32, device=x.device)
        dx = torch.empty_like(x)
        _affine_select_bwd[grid](
            grad_out, x, scale, scale_t0, sel, dx, partial, n, h, grid[1],
            ONE_PLUS=one_plus, HAS_SELECT=has_select,
            BLOCK_N=TOKENS_PER_STEP, STEPS=STEPS_PER_PROGRAM, BLOCK_H=HIDDEN_BLOCK,
        )
        d_scale, d_shift, d_scale_t0, d_shift_t0 = partial.sum(2).to(ctx.row_dtype).unbind(0)
        return (
            dx,
            grad_out if has_res else None,
            d_scale,
            d_shift if has_shift else None,
            d_scale_t0 if has_select else None,
            d_shift_t0 if has_select and has_shift else None,
            None,
            None,
        )


def modulate(x, scale, shift, scale_t0=None, shift_t0=None, select=None):
    """Fused `reference.modulate`."""
    return _AffineSelect.apply(x, None, scale, shift, scale_t0, shift_t0, select, 1.0)


def gate_residual(residual, y, gate, gate_t0=None, select=None):
    """Fused `reference.gate_residual`."""
    return _AffineSelect.apply(y, residual, gate, None, gate_t0, None, select, 0.0)


@triton.jit
def _normalised_pairs(X, W, COS, SIN, bh, rows, pairs, HEADS, N, stride_b, stride_h, stride_n, eps, D: tl.constexpr):
    """The (even, odd) halves of each rotary pair after RMSNorm (before its weight), 1/rms, the
    weight halves, the rotation tables at these tokens, and the in-bounds mask."""
    pair_ok = pairs < D // 2
    mask = (rows < N)[:, None] & pair_ok[None, :]
    src = X + (bh // HEADS) * stride_b + (bh % HEADS) * stride_h + rows[:, None] * stride_n + 2 * pairs[None, :]
    even = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    odd = tl.load(src + 1, mask=mask, other=0.0).to(tl.float32)
    inv_rms = tl.rsqrt((tl.sum(even * even, axis=1) + tl.sum(odd * odd, axis=1)) / D + eps)[:, None]
    w_even = tl.load(W + 2 * pairs, mask=pair_ok, other=0.0).to(tl.float32)[None, :]
    w_odd = tl.load(W + 2 * pairs + 1, mask=pair_ok, other=0.0).to(tl.float32)[None, :]
    angle = rows[:, None] * (D // 2) + pairs[None, :]
    cos = tl.load(COS + angle, mask=mask, other=0.0)
    sin = tl.load(SIN + angle, mask=mask, other=0.0)
    return even * inv_rms, odd * inv_rms, inv_rms, w_even, w_odd, cos, sin, mask


@triton.jit
def _rms_norm_rope_fwd(
    X, W, COS, SIN, OUT, HEADS, N, stride_b, stride_h, stride_n, eps,
    D: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    bh = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    pairs = tl.arange(0, BLOCK_P)
    hat_even, hat_odd, inv_rms, w_even, w_odd, cos, sin, mask = _normalised_pairs(
        X, W, COS, SIN, bh, rows, pairs, HEADS, N, stride_b, stride_h, stride_n, eps, D
    )
    n_even = hat_even * w_even
    n_odd = hat_odd * w_odd
    dst = OUT + (bh * N + rows[:, None]) * D + 2 * pairs[None, :]
    tl.store(dst, (n_even * cos - n_odd * sin).to(OUT.dtype.element_ty), mask=mask)
    tl.store(dst + 1, (n_even * sin + n_odd * cos).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_rope_bwd(
    DOUT, X, W, COS, SIN, DX, DW_PARTIAL, HEADS, N, stride_b, stride_h, stride_n, eps,
    D: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    bh = tl.program_id(0)
    block = tl.program_id(1)
    rows = block * BLOCK_N + tl.arange(0, BLOCK_N)
    pairs = tl.arange(0, BLOCK_P)
    hat_even, hat_odd, inv_rms, w_even, w_odd, cos, sin, mask = _normalised_pairs(
        X, W, COS, SIN, bh, rows, pairs, HEADS, N, stride_b, stride_h, stride_n, eps, D
    )
    grad = DOUT + (bh * N + rows[:, None]) * D + 2 * pairs[None, :]
    g_even = tl.load(grad, mask=mask, other=0.0).to(tl.float32)
    g_odd = tl.load(grad + 1, mask=mask, other=0.0).to(tl.float32)
    # The rotation's transpose takes the gradient back to the normed, weighted values.
    gn_even = g_even * cos + g_odd * sin
    gn_odd = g_odd * cos - g_even * sin
    dhat_even = gn_even * w_even
    dhat_odd = gn_odd * w_odd
    mean_dot = ((tl.sum(dhat_even * hat_even, axis=1) + tl.sum(dhat_odd * hat_odd, axis=1)) / D)[:, None]
    dst = DX + (bh * N + rows[:, None]) * D + 2 * pairs[None, :]
    tl.store(dst, (inv_rms * (dhat_even - hat_even * mean_dot)).to(DX.dtype.element_ty), mask=mask)
    tl.store(dst + 1, (inv_rms * (dhat_odd - hat_odd * mean_dot)).to(DX.dtype.element_ty), mask=mask)
    partial = DW_PARTIAL + (bh * tl.num_programs(1) + block) * D + 2 * pairs
    pair_ok = pairs < D // 2
    tl.store(partial, tl.sum(gn_even * hat_even, axis=0), mask=pair_ok)
    tl.store(partial + 1, tl.sum(gn_odd * hat_odd, axis=0), mask=pair_ok)


ROPE_TOKEN_BLOCK = 32


class _RMSNormRoPE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, cos, sin):
        if x.stride(-1) != 1:
            x = x.contiguous()
        b, heads, n, d = x.shape
        cos, sin = cos.float().contiguous(), sin.float().contiguous()
        out = torch.empty(b, heads, n, d, dtype=x.dtype, device=x.device)
        block_p = triton.next_power_of_2(d // 2)
        grid = (b * heads, triton.cdiv(n, ROPE_TOKEN_BLOCK))
        _rms_norm_rope_fwd[grid](
            x, weight, cos, sin, out, heads, n, x.stride(0), x.stride(1), x.stride(2), eps,
            D=d, BLOCK_P=block_p, BLOCK_N=ROPE_TOKEN_BLOCK,
        )
        ctx.save_for_backward(x, weight, cos, sin)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, cos, sin = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        b, heads, n, d = x.shape
        grid = (b * heads, triton.cdiv(n, ROPE_TOKEN_BLOCK))
        dx = torch.empty(b, heads, n, d, dtype=x.dtype, device=x.device)
        dw_partial = torch.empty(grid[0] * grid[1], d, dtype=torch.float32, device=x.device)
        _rms_norm_rope_bwd[grid](
            grad_out, x, weight, cos, sin, dx, dw_partial, heads, n, x.stride(0), x.stride(1), x.stride(2),
            ctx.eps, D=d, BLOCK_P=triton.next_power_of_2(d // 2), BLOCK_N=ROPE_TOKEN_BLOCK,
        )
        return dx, dw_partial.sum(0).to(weight.dtype), None, None, None


def rms_norm_rope(x, weight, eps, cos, sin):
    """Fused `reference.rms_norm_rope`; the output has x's dtype."""
    return _RMSNormRoPE.apply(x, weight, eps, cos, sin)
