"""Fused elementwise ops for MUG-DiT, each beside its plain PyTorch reference.

The model calls `modulate`, `gate_residual` and `rms_norm_rope` from here. They run the Triton
kernels (mugv.kernels.triton_ops) when every tensor is a plain CUDA tensor, Triton is installed,
fused kernels are enabled and torch.compile is not tracing (inductor fuses the reference chain
itself, and a custom autograd.Function would break its graph); otherwise the reference
(mugv.kernels.reference). `set_fused_kernels(False)` turns the Triton path off.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from mugv.kernels import reference

_enabled = True


def set_fused_kernels(enabled: bool) -> None:
    """Allow (default) or forbid the Triton kernels process-wide."""
    global _enabled
    _enabled = enabled


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _plain_cuda(tensors: tuple) -> bool:
    if not all(t is None or t.is_cuda for t in tensors):  # the CPU path stops here, on every call
        return False
    from torch.distributed.tensor import DTensor

    return not any(isinstance(t, DTensor) for t in tensors)


def use_fused(*tensors: torch.Tensor | None) -> bool:
    """Whether the Triton kernels apply to these operands."""
    return (
        _enabled
        and not torch.compiler.is_compiling()
        and _plain_cuda(tensors)
        and triton_available()
    )


def modulate(x, scale, shift, scale_t0=None, shift_t0=None, select=None):
    """adaLN modulation `x * (1 + scale) + shift` per token from the t or t0 rows (see reference)."""
    if use_fused(x, scale, shift, scale_t0, shift_t0, select):
        from mugv.kernels import triton_ops

        return triton_ops.modulate(x, scale, shift, scale_t0, shift_t0, select)
    return reference.modulate(x, scale, shift, scale_t0, shift_t0, select)


def gate_residual(residual, y, gate, gate_t0=None, select=None):
    """`residual + gate * y` per token from the t or t0 gate row (see reference)."""
    if use_fused(residual, y, gate, gate_t0, select):
        from mugv.kernels import triton_ops

        return triton_ops.gate_residual(residual, y, gate, gate_t0, select)
    return reference.gate_residual(residual, y, gate, gate_t0, select)


def rms_norm_rope(x, weight, eps, cos, sin):
    """RMSNorm then interleaved 3D RoPE over (B, heads, N, head_dim) (see reference)."""
    if use_fused(x, weight, cos, sin) and not (cos.requires_grad or sin.requires_grad):
        from mugv.kernels import triton_ops

        return triton_ops.rms_norm_rope(x, weight, eps, cos, sin)
    return reference.rms_norm_rope(x, weight, eps, cos, sin)
