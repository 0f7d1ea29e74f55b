"""Load shapes: how the offered load moves over a test, as a multiplier of the base rate.

Open-loop runs multiply each model's base arrival rate by `multiplier(t)`; closed-loop runs
(interactive Locust) multiply user counts by it. A diurnal day is compressed into the test's
duration, so a 10-minute run walks through the morning and afternoon peaks of 24 hours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from loadtests.traffic.rollout import Diurnal, Peak

# Outpatient sessions when a profile names no rollout (the same curve as rollouts/*.yaml).
DEFAULT_DIURNAL = Diurnal(
    baseline=0.04,
    peaks=[Peak(hour=9.5, width_h=1.3, weight=1.0), Peak(hour=15.0, width_h=1.3, weight=0.65)],
)


class Shape(Protocol):
    @property
    def duration_s(self) -> float: ...

    def multiplier(self, t: float) -> float: ...

    @property
    def max_multiplier(self) -> float: ...


@dataclass(frozen=True)
class Constant:
    duration_s: float
    level: float = 1.0

    def multiplier(self, t: float) -> float:
        return self.level

    @property
    def max_multiplier(self) -> float:
        return self.level


@dataclass(frozen=True)
class Step:
    """Stairs from `start` to 1.0 in `steps` equal steps: finds where latency breaks."""

    duration_s: float
    steps: int = 5
    start: float = 0.2

    def multiplier(self, t: float) -> float:
        k = min(self.steps - 1, int(max(t, 0.0) / self.duration_s * self.steps))
        return self.start + (1.0 - self.start) * k / max(self.steps - 1, 1)

    @property
    def max_multiplier(self) -> float:
        return 1.0


@dataclass(frozen=True)
class Spike:
    """Base load with one burst of `height` x base in the middle third's centre."""

    duration_s: float
    height: float = 3.0
    spike_s: float = 10.0

    def multiplier(self, t: float) -> float:
        start = (self.duration_s - self.spike_s) / 2
        return self.height if start <= t < start + self.spike_s else 1.0

    @property
    def max_multiplier(self) -> float:
        return max(self.height, 1.0)


@dataclass(frozen=True)
class DiurnalShape:
    """24 hours compressed into `duration_s`, scaled so that the daily peak is 1.0."""

    duration_s: float
    diurnal: Diurnal = DEFAULT_DIURNAL
    start_hour: float = 0.0

    def multiplier(self, t: float) -> float:
        hour = (self.start_hour + 24.0 * t / self.duration_s) % 24.0
        # The peak is taken on a one-minute grid; clamp so a true peak between grid points
        # cannot exceed the thinning bound.
        return min(1.0, self.diurnal.weight(hour) / self.diurnal.peak_weight)

    @property
    def max_multiplier(self) -> float:
        return 1.0


class ShapeSpec(BaseModel):
    """The `shape:` block of a load-test profile."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["constant", "step", "spike", "diurnal", "soak"] = Field(
        "constant", description="soak is a constant load held for a long duration."
    )
    steps: int = Field(5, ge=1, description="step: number of stairs.")
    start: float = Field(0.2, gt=0, le=1, description="step: first stair, fraction of base.")
    height: float = Field(3.0, gt=0, description="spike: burst height, multiple of base.")
    spike_s: float = Field(10.0, gt=0, description="spike: burst length in seconds.")
    start_hour: float = Field(6.0, ge=0, lt=24, description="diurnal: clock hour at t=0.")

    def build(self, duration_s: float, diurnal: Diurnal | None = None) -> Shape:
        if self.kind == "step":
            return Step(duration_s, self.steps, self.start)
        if self.kind == "spike":
            return Spike(duration_s, self.height, min(self.spike_s, duration_s))
        if self.kind == "diurnal":
            return DiurnalShape(duration_s, diurnal or DEFAULT_DIURNAL, self.start_hour)
        return Constant(duration_s)
