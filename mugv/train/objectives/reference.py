"""The frozen reference model that preference objectives compare against, provided three ways
(ReferenceMode): the same network with its LoRA adapters off, a frozen copy, or nothing (the
reference's values were precomputed into the data)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch
from torch import nn

from mugv.errors import ConfigError
from mugv.train.lora import has_lora, lora_disabled
from mugv.train.objectives.base import ReferenceMode


class ReferenceModel:
    """Called like the model it wraps; never records gradients."""

    def __init__(self, module: nn.Module, context: Callable[[], contextlib.AbstractContextManager],
                 separate: bool):
        self.module = module
        self.context = context
        self.separate = separate  # a module of its own (to be parallelized like the model)

    def __call__(self, *args, **kwargs):
        with torch.no_grad(), self.context():
            out = self.module(*args, **kwargs)
        if self.separate and hasattr(self.module, "reshard"):
            # FSDP2 keeps the root's parameters gathered after a forward, for the backward that a
            # frozen copy never runs: shard them again
            self.module.reshard()
        return out


def build_reference(mode: ReferenceMode, model: nn.Module) -> ReferenceModel | None:
    """The reference for `mode`, made from `model` before it is parallelized."""
    if mode in (ReferenceMode.NONE, ReferenceMode.PRECOMPUTED):
        return None
    if mode is ReferenceMode.ADAPTERS_OFF:
        if not has_lora(model):
            raise ConfigError("this objective's reference is the model with its LoRA adapters off: set lora.rank > 0 "
                              "(or use a frozen-copy reference for full fine-tuning)")
        return ReferenceModel(model, lambda: lora_disabled(model), separate=False)
    frozen = copy.deepcopy(model).eval()
    frozen.requires_grad_(False)
    return ReferenceModel(frozen, contextlib.nullcontext, separate=True)
