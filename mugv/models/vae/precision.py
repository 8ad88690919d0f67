"""The precision the VAE computes in at inference (`mugv encode` / `mugv generate --vae-precision`).

- `fp32`: float32 weights and activations, TF32 off for CUDA matmuls and cuDNN convolutions
  inside the call (torch's own default lets cuDNN convolutions use TF32).
- `tf32`: float32 storage, TF32 tensor cores for CUDA matmuls and convolutions inside the call.
  The switches only concern CUDA kernels: on the CPU this computes exactly what `fp32` does.
- `bf16`: bf16 autocast around float32 weights. The model keeps in float32 what would reach
  its output unfiltered or needs wide sums: the group norms' statistics, the latent moments head
  (the temporal encoder's last norm and conv, and the quant conv) and the output pixels' norm
  and conv (mugv/models/vae/model.py: `GroupNorm32`, `_float32`). Works on the CPU too.
- `auto`: `bf16` on a CUDA device that supports it, else `fp32`.

Whatever the precision, `encode` returns float32 latents and `decode` float32 pixels. The TF32
switches are process-wide: they are set on entry and restored on exit, even on an error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from mugv.config import VAE_PRECISIONS
from mugv.errors import ConfigError

__all__ = ["VAE_PRECISIONS", "describe_vae_precision", "resolve_vae_precision", "tf32_switches", "vae_precision"]

_WHAT = {
    "fp32": "float32, TF32 off",
    "tf32": "float32 storage, TF32 matmuls and convolutions",
    "bf16": "bf16 autocast; group-norm statistics, the latent head and the output conv in float32",
}


def resolve_vae_precision(name: str, device: torch.device, key: str = "vae_precision") -> str:
    """`fp32`, `tf32` or `bf16` for `name` on `device`; an unknown name is a ConfigError naming `key`."""
    if name not in VAE_PRECISIONS:
        raise ConfigError(f"{key} = {name!r} is not one of {', '.join(map(repr, VAE_PRECISIONS))}")
    if name != "auto":
        return name
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def describe_vae_precision(name: str, device: torch.device) -> str:
    """One log line: the precision the VAE runs in on `device`, and why."""
    resolved = resolve_vae_precision(name, device)
    chosen = f"auto on {device.type}" if name == "auto" else "as asked"
    note = " (no effect on the CPU: computes as fp32)" if resolved == "tf32" and device.type != "cuda" else ""
    return f"VAE precision: {resolved} ({chosen}): {_WHAT[resolved]}{note}"


def tf32_switches() -> list[tuple[object, str, object, object]]:
    """(owner, attribute, on, off) of the CUDA matmul and cuDNN convolution TF32 switches.

    torch >= 2.9 has `fp32_precision` ("tf32" / "ieee"), and reading the older `allow_tf32`
    booleans after it was set raises; older torch has the booleans only."""
    if hasattr(torch.backends.cudnn, "conv"):
        return [(torch.backends.cuda.matmul, "fp32_precision", "tf32", "ieee"),
                (torch.backends.cudnn.conv, "fp32_precision", "tf32", "ieee")]
    return [(torch.backends.cuda.matmul, "allow_tf32", True, False), (torch.backends.cudnn, "allow_tf32", True, False)]


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    switches = tf32_switches()
    saved = [getattr(owner, attr) for owner, attr, _, _ in switches]
    try:
        for owner, attr, on, off in switches:
            setattr(owner, attr, on if enabled else off)
        yield
    finally:
        for (owner, attr, _, _), value in zip(switches, saved):
            setattr(owner, attr, value)


@contextlib.contextmanager
def vae_precision(name: str, device: torch.device) -> Iterator[str]:
    """A context for VAE `encode` / `decode` calls on `device` in precision `name`; yields the
    resolved precision (`fp32`, `tf32` or `bf16`)."""
    resolved = resolve_vae_precision(name, device)
    with _tf32(resolved == "tf32"):
        if resolved == "bf16":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                yield resolved
        else:
            yield resolved
