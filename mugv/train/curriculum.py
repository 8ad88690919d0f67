"""Multi-stage training: which stage runs now, and what it sets.

A run's `stages` are taken in order. Each stage sets the data mixture (image share, annealed
across the stage), the allowed buckets, the conditioning masks, caption dropout and its own LR
schedule, and ends on steps, samples or a validation-loss plateau. The curriculum's state
(stage index, where the stage started, the plateau tracker) goes into every checkpoint, so a
resume continues inside the right stage.
"""

from __future__ import annotations

from dataclasses import dataclass

from mugv.config import OptimConfig, RunConfig, StageConfig
from mugv.train.objectives.flow import ConditioningPolicy
from mugv.train.schedule import lr_multiplier


@dataclass
class StageSettings:
    """What the active stage asks of the data source, the objective and the optimizer."""

    name: str
    image_fraction: float | None
    buckets: list[str]
    policy: ConditioningPolicy
    lr_scale: float  # multiplier of optim.lr for this step


class Curriculum:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        # Without stages the run is one stage of train.steps with the run's own settings.
        self.stages = cfg.stages or [
            StageConfig(
                name="main",
                steps=cfg.train.steps,
                lr=cfg.optim.lr,
                warmup_steps=cfg.optim.warmup_steps,
                schedule=cfg.optim.schedule,
                min_lr_ratio=cfg.optim.min_lr_ratio,
            )
        ]
        self.index = 0
        self.start_step = 0
        self.start_samples = 0
        self.best_val: float | None = None
        self.evals_since_best = 0

    @property
    def stage(self) -> StageConfig:
        return self.stages[self.index]

    @property
    def finished(self) -> bool:
        return self.index >= len(self.stages)

    def progress(self, step: int, samples: int) -> float:
        """How far into the active stage, in [0, 1] (0 for a stage that ends only on a plateau)."""
        stage = self.stage
        if stage.steps:
            return min((step - self.start_step) / stage.steps, 1.0)
        if stage.samples:
            return min((samples - self.start_samples) / stage.samples, 1.0)
        return 0.0

    def settings(self, step: int, samples: int) -> StageSettings:
        stage, data = self.stage, self.cfg.data
        image_fraction = None
        if stage.image_fraction is not None:
            begin, end = stage.image_fraction
            image_fraction = begin + (end - begin) * self.progress(step, samples)
        policy = ConditioningPolicy(
            first_frame_prob=data.i2v_prob if stage.first_frame_prob is None else stage.first_frame_prob,
            last_frame_prob=stage.last_frame_prob,
            continuation_prob=stage.continuation_prob,
            caption_dropout=data.caption_dropout if stage.caption_dropout is None else stage.caption_dropout,
        )
        stage_optim = OptimConfig(
            lr=stage.lr if stage.lr is not None else self.cfg.optim.lr,
            warmup_steps=stage.warmup_steps,
            schedule=stage.schedule,
            min_lr_ratio=stage.min_lr_ratio,
        )
        scale = lr_multiplier(step - self.start_step, max(stage.steps, 1), stage_optim)
        return StageSettings(stage.name, image_fraction, list(stage.buckets), policy,
                             scale * stage_optim.lr / self.cfg.optim.lr)

    def record_validation(self, loss: float) -> None:
        min_delta = self.stage.plateau_min_delta
        if self.best_val is None or loss < self.best_val - min_delta:
            self.best_val, self.evals_since_best = loss, 0
        else:
            self.evals_since_best += 1

    def stage_done(self, step: int, samples: int) -> bool:
        stage = self.stage
        return bool(
            (stage.steps and step - self.start_step >= stage.steps)
            or (stage.samples and samples - self.start_samples >= stage.samples)
            or (stage.plateau_patience and self.evals_since_best >= stage.plateau_patience)
        )

    def advance(self, step: int, samples: int) -> None:
        self.index += 1
        self.start_step, self.start_samples = step, samples
        self.best_val, self.evals_since_best = None, 0

    def state_dict(self) -> dict:
        return {
            "index": self.index,
            "start_step": self.start_step,
            "start_samples": self.start_samples,
            "best_val": self.best_val,
            "evals_since_best": self.evals_since_best,
            "stage_names": [s.name for s in self.stages],
        }

    def load_state_dict(self, state: dict) -> None:
        names = [s.name for s in self.stages]
        if state["stage_names"] != names:
            raise ValueError(f"checkpoint stages {state['stage_names']} differ from the configured {names}")
        self.index = state["index"]
        self.start_step, self.start_samples = state["start_step"], state["start_samples"]
        self.best_val, self.evals_since_best = state["best_val"], state["evals_since_best"]
