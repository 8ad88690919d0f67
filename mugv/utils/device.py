"""The torch device a user names (`--device`, `train.device`), checked where it is read."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from mugv.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when present, else the CPU) or a torch device name such as `cpu`, `cuda:1`.
    An unknown name, or CUDA on a machine without it, is a ConfigError naming the value."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: this machine has no CUDA device")
    return device


@contextmanager
def visiting(module: torch.nn.Module, device: torch.device, offload: bool) -> Iterator[None]:
    """With `offload`, `module` is on `device` only inside the block and back on the CPU after
    (its CUDA memory returned to the driver); without, nothing moves."""
    if offload:
        module.to(device)
    try:
        yield
    finally:
        if offload:
            module.to("cpu")
            if device.type == "cuda":
                torch.cuda.empty_cache()
