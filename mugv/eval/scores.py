"""What a number from `mugv eval` is: every metric says whether it is computed as the named
benchmark computes it (`official`) or stands in for it (`proxy`), and what it may be compared with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

OFFICIAL = "official"  # the published formula on the published backbone / parameters
PROXY = "proxy"  # a stand-in: same idea, other backbone or a mugv-specific measure

Backend = Literal["official", "proxy"]


class NotMeasurable(ValueError):
    """This video cannot give this metric (too small, too short, not a prompt the metric reads)."""


@dataclass
class Score:
    """One metric on one video: a value, or None and the reason it could not be measured."""

    value: float | None
    detail: dict[str, Any] = field(default_factory=dict)
    skipped: str = ""


@dataclass(frozen=True)
class Metric:
    """A per-video metric. `measure` returns a value, or a value and details for the JSONL."""

    name: str
    backend: Backend
    comparable_to: str
    higher_is_better: bool
    description: str
    measure: Callable[[Any], float | tuple[float, dict]]
    vbench_dimension: str = ""  # the VBench dimension it measures or stands in for; only `official` ones count

    def info(self) -> dict[str, Any]:
        return {"backend": self.backend, "comparable_to": self.comparable_to,
                "higher_is_better": self.higher_is_better, "description": self.description}


@dataclass(frozen=True)
class SetMetric:
    """A metric of a whole set of videos (FVD): `collect` takes what it needs from each video
    while it is decoded, `finish` turns the collected list into the set's value."""

    name: str
    backend: Backend
    comparable_to: str
    higher_is_better: bool
    description: str
    collect: Callable[[Any], Any]
    finish: Callable[[list], float | tuple[float, dict]]

    def info(self) -> dict[str, Any]:
        return {"backend": self.backend, "comparable_to": self.comparable_to,
                "higher_is_better": self.higher_is_better, "description": self.description}


def run_metric(measure: Callable, subject: Any) -> Score:
    """A Score from `measure(subject)`, or a skip with the reason it could not be measured."""
    try:
        result = measure(subject)
    except NotMeasurable as exc:
        return Score(None, skipped=str(exc))
    value, detail = result if isinstance(result, tuple) else (result, {})
    return Score(float(value), detail)


def summarise(values: list[float | None]) -> dict[str, float | int | None]:
    """Mean, spread and count of the measured values (None: not measured)."""
    measured = np.array([v for v in values if v is not None and not math.isnan(v)], np.float64)
    if not len(measured):
        return {"mean": None, "std": None, "min": None, "max": None, "count": 0}
    return {"mean": float(measured.mean()), "std": float(measured.std()), "min": float(measured.min()),
            "max": float(measured.max()), "count": int(len(measured))}
