"""Plain PyTorch versions of the fused elementwise chains: the model's eager path and the
references the Triton kernels are tested against.

Shapes follow MUG-DiT: tokens `x` are (B, N, hidden); a modulation row (`scale`, `shift`, `gate`)
is (B, hidden) for the noised frames, with an optional `_t0` row for clean conditioning frames;
`select` is (B, N, 1) bool, True where a token takes the t row.
"""

from __future__ import annotations

import torch


def modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, scale_t0: torch.Tensor | None = None,
             shift_t0: torch.Tensor | None = None, select: torch.Tensor | None = None) -> torch.Tensor:
    """adaLN modulation `x * (1 + scale) + shift`, per token from the t or t0 rows."""
    out = x * (1 + scale[:, None]) + shift[:, None]
    if select is None:
        return out
    return torch.where(select, out, x * (1 + scale_t0[:, None]) + shift_t0[:, None])


def gate_residual(residual: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, gate_t0: torch.Tensor | None = None,
                  select: torch.Tensor | None = None) -> torch.Tensor:
    """`residual + gate * y`, per token from the t or t0 gate row."""
    out = gate[:, None] * y
    if select is not None:
        out = torch.where(select, out, gate_t0[:, None] * y)
    return residual + out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, computed in float32, scaled in the input dtype (as released)."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of `x` (B, heads, N, head_dim) in float32; return x's dtype."""
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def rms_norm_rope(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor,
                  sin: torch.Tensor) -> torch.Tensor:
    """The q/k chain of self-attention: RMSNorm then 3D RoPE."""
    return apply_rope(rms_norm(x, weight, eps), cos, sin)
