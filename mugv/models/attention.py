"""Which fused SDPA kernel attention runs on (`train.attention_backend`).

`auto` keeps torch's own priority (recent CUDA builds put cuDNN first on H100/H200). A named
backend goes first and the other fused kernels follow; the unfused math kernel is left out, so
a shape no fused kernel supports fails loudly instead of running at a fraction of the speed.
On the CPU the setting changes nothing.
"""

from __future__ import annotations

import contextlib

import torch

def backend_priority(name: str) -> list:
    """The SDPBackend order for `name` (empty for auto: torch decides)."""
    from torch.nn.attention import SDPBackend

    fused = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION}
    if name == "auto":
        return []
    return [fused[name]] + [backend for key, backend in fused.items() if key != name]


def attention_backend(name: str, device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which SDPA prefers `name`'s kernel (forward and the backward's recompute alike)."""
    priority = backend_priority(name)
    if not priority or device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel(priority, set_priority=True)


def describe_backend(name: str, device: torch.device) -> str:
    """One log line: the setting and the order the kernels are tried in."""
    if device.type != "cuda":
        return f"attention: {name} (CPU: torch's CPU kernels)"
    order = backend_priority(name)
    if not order:
        with contextlib.suppress(Exception):
            order = [torch.nn.attention.SDPBackend(int(b)) for b in torch._C._get_sdp_priority_order()]
    return f"attention: {name}, kernels tried in order " + ", ".join(getattr(b, "name", str(b)) for b in order)
