"""Traffic model: a rollout description in, requests per second per model over a day out.

A rollout lists groups of sites (hospitals, township health centres, ...), the visits each
site sees per day, and which share of visits calls each model (with how many requests one
use makes: an LLM consultation is several chat turns). A diurnal profile spreads a day's
requests over the clock; a burst factor covers short-term peaks above the hourly mean. The
defaults and their sources are in loadtests/README.md and loadtests/rollouts/national.yaml.
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

SECONDS_PER_DAY = 86_400.0
GRID = 1440  # one-minute steps: the clock grid for daily means, peaks and troughs


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Usage(_Strict):
    share: float = Field(ge=0, le=1, description="Fraction of visits that use the model.")
    requests_per_use: float = Field(1.0, gt=0, description="Requests one use makes (chat turns).")


class SiteGroup(_Strict):
    name: str = Field(description="Kind of site, e.g. secondary-and-above-hospitals.")
    sites: int = Field(ge=0, description="Number of sites of this kind.")
    visits_per_site_per_day: float = Field(ge=0, description="Mean visits per site per day.")
    adoption: float = Field(1.0, ge=0, le=1, description="Fraction of the sites that are live.")
    usage: dict[str, Usage] = Field(default_factory=dict, description="Per model name.")


class Peak(_Strict):
    hour: float = Field(ge=0, lt=24, description="Local clock hour of the peak centre.")
    width_h: float = Field(gt=0, description="Standard deviation of the peak in hours.")
    weight: float = Field(gt=0, description="Relative height of the peak.")


class Diurnal(_Strict):
    peaks: list[Peak] = Field(min_length=1, description="Gaussian peaks over the clock.")
    baseline: float = Field(0.05, ge=0, description="Night-time floor, relative to peak weights.")

    def weight(self, hour: float) -> float:
        """Unnormalised intensity at a clock hour; peaks wrap around midnight."""
        total = self.baseline
        for p in self.peaks:
            d = (hour - p.hour + 12.0) % 24.0 - 12.0
            total += p.weight * math.exp(-0.5 * (d / p.width_h) ** 2)
        return total

    def density(self, hour: float) -> float:
        """Fraction of a day's requests per hour at `hour` (integrates to 1 over 24 h)."""
        return self.weight(hour) / self.mean_weight / 24.0

    def peak_to_mean(self) -> float:
        return self.peak_weight / self.mean_weight

    @cached_property
    def mean_weight(self) -> float:
        return sum(self.by_minute) / len(self.by_minute)

    @cached_property
    def peak_weight(self) -> float:
        return max(self.by_minute)

    @cached_property
    def by_minute(self) -> list[float]:
        """Unnormalised intensity at each minute of the day."""
        return [self.weight(24.0 * i / GRID) for i in range(GRID)]


class Capacity(_Strict):
    headroom: float = Field(0.25, ge=0, description="Extra load planned for above the peak.")
    gpu_hour_cost: float = Field(2.0, ge=0, description="Cost of one GPU for one hour.")
    currency: str = Field("USD", description="Unit of gpu_hour_cost.")


class Rollout(_Strict):
    name: str
    description: str = ""
    site_groups: list[SiteGroup] = Field(min_length=1)
    peak_day_factor: float = Field(
        1.0, ge=1, description="Busiest weekday over the annual daily mean."
    )
    diurnal: Diurnal
    burst_factor: float = Field(1.0, ge=1, description="Short-term peak over the hourly mean.")
    capacity: Capacity = Field(default_factory=Capacity)

    @model_validator(mode="after")
    def _some_usage(self) -> Rollout:
        if not self.models:
            raise ValueError("no site group uses any model")
        return self

    @property
    def models(self) -> list[str]:
        return sorted({m for g in self.site_groups for m in g.usage})

    def daily_requests(self, model: str) -> float:
        """Requests to `model` on the busiest day."""
        total = 0.0
        for g in self.site_groups:
            use = g.usage.get(model)
            if use is not None:
                visits = g.sites * g.adoption * g.visits_per_site_per_day
                total += visits * use.share * use.requests_per_use
        return total * self.peak_day_factor

    def rate_rps(self, model: str, hour: float) -> float:
        """Mean request rate at a clock hour (no bursts)."""
        return self.daily_requests(model) * self.diurnal.density(hour) / 3600.0

    def mean_rps(self, model: str) -> float:
        return self.daily_requests(model) / SECONDS_PER_DAY

    def peak_rps(self, model: str) -> float:
        """The rate to plan for: the diurnal peak times the burst factor."""
        return self.mean_rps(model) * self.diurnal.peak_to_mean() * self.burst_factor

    def trough_rps(self, model: str) -> float:
        return self.daily_requests(model) * min(self.diurnal.by_minute) / self.diurnal.mean_weight \
            / 24.0 / 3600.0

    def hourly(self, model: str) -> list[float]:
        """Mean rate in each clock hour 0..23."""
        return [self.rate_rps(model, h + 0.5) for h in range(24)]


def load_rollout(path: Path) -> Rollout:
    raw = yaml.safe_load(Path(path).read_text())
    return Rollout.model_validate(raw)
