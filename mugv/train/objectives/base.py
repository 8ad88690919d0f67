"""What an objective is: (model, batch, generator[, reference]) -> a loss, per-sample values and
named metrics. The trainer only calls `compute`; an objective that compares the model with a
frozen reference declares how that reference is provided, and the trainer provides it
(mugv.train.objectives.reference)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

import torch


class ReferenceMode(enum.Enum):
    """How an objective's frozen reference model is provided."""

    NONE = "none"  # the objective needs no reference
    ADAPTERS_OFF = "adapters_off"  # LoRA training: the same network with its adapters switched off
    FROZEN_COPY = "frozen_copy"  # full fine-tuning: a frozen copy, sharded like the model, no optimizer state
    PRECOMPUTED = "precomputed"  # the reference's values travel with the data: one model in memory


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # the scalar the trainer back-propagates
    per_sample: torch.Tensor  # (B,) detached per-sample values (e.g. velocity errors)
    metrics: dict[str, float] = field(default_factory=dict)  # logged beside the loss


class Objective(Protocol):
    name: str
    reference: ReferenceMode
    policy: object  # the conditioning policy the curriculum sets per stage

    def compute(self, model: torch.nn.Module, batch, generator: torch.Generator,
                reference: torch.nn.Module | None = None) -> ObjectiveOutput: ...
