"""Training objectives behind one seam (base.Objective); the trainer builds one by name
(`train.objective`) and only calls its `compute`. A new objective is a module here plus an entry
in OBJECTIVES."""

from __future__ import annotations

from collections.abc import Callable

from mugv.config import RunConfig
from mugv.errors import ConfigError
from mugv.train.objectives.base import Objective, ObjectiveOutput, ReferenceMode
from mugv.train.objectives.flow import ConditioningPolicy, FlowMatchingObjective, StepInputs
from mugv.train.objectives.preference import (
    FlowDPOObjective,
    FlowKTOObjective,
    PreferenceObjective,
    build_preference_objective,
)
from mugv.train.objectives.reference import ReferenceModel, build_reference

# factory(cfg, policy, dp_group): dp_group = the process group of the data-parallel ranks that
# together hold the global batch, or None (one process), for objectives with batch statistics
OBJECTIVES: dict[str, Callable[[RunConfig, ConditioningPolicy, object], Objective]] = {
    "flow": lambda cfg, policy, dp_group: FlowMatchingObjective(cfg.flow, policy),
    "dpo": lambda cfg, policy, dp_group: build_preference_objective(FlowDPOObjective, cfg, policy, dp_group),
    "kto": lambda cfg, policy, dp_group: build_preference_objective(FlowKTOObjective, cfg, policy, dp_group),
    "enhancer_flow": lambda cfg, policy, dp_group: _enhancer_objective(cfg),
}


def _enhancer_objective(cfg: RunConfig) -> Objective:
    # imported here: mugv.enhance.objective itself imports this package's base module
    from mugv.enhance.objective import EnhancerFlowObjective

    if cfg.model.family != "wan-dit" or cfg.data.source != "pairs":
        raise ConfigError(f"train.objective = 'enhancer_flow' trains an enhancer: it needs model.family = 'wan-dit' "
                          f"and data.source = 'pairs', not {cfg.model.family!r} and {cfg.data.source!r}")
    return EnhancerFlowObjective(cfg.enhancer.sigma_range)


def build_objective(cfg: RunConfig, policy: ConditioningPolicy, dp_group=None) -> Objective:
    try:
        factory = OBJECTIVES[cfg.train.objective]
    except KeyError:
        raise ConfigError(f"train.objective = {cfg.train.objective!r} is not an objective; known: "
                          f"{', '.join(OBJECTIVES)}") from None
    return factory(cfg, policy, dp_group)


__all__ = [
    "OBJECTIVES", "ConditioningPolicy", "FlowDPOObjective", "FlowKTOObjective", "FlowMatchingObjective", "Objective",
    "ObjectiveOutput", "PreferenceObjective", "ReferenceMode", "ReferenceModel", "StepInputs", "build_objective",
    "build_reference",
]
