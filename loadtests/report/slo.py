"""SLO targets derived from the model manifests, and the verdict on a run's records.

Targets are read from each manifest's `slo` block, never restated: an imaging model has one
end-to-end latency target, an LLM has time-to-first-token and inter-token targets, and each
has an availability objective whose complement is the error budget. A profile may override a
target (the CI smoke profile does, loudly); the report says where every target came from.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from loadtests.generator.openloop import NOT_SENT, Record, failure_kinds
from loadtests.report.stats import percentile

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


@dataclass(frozen=True)
class LatencyTarget:
    metric: str  # "latency" (end to end), "ttft" or "itl"
    threshold_s: float
    objective: float


@dataclass(frozen=True)
class ModelSLO:
    model: str
    targets: tuple[LatencyTarget, ...]
    availability: float
    source: str  # "manifest" or "profile override: ..."

    @property
    def error_budget(self) -> float:
        return 1.0 - self.availability


# manifest slo field -> (metric, objective field); the LLM fields follow serving/llm/manifest.py
_FIELDS = {
    "latency_threshold_s": ("latency", "latency_objective"),
    "ttft_threshold_s": ("ttft", "ttft_objective"),
    "itl_threshold_s": ("itl", "itl_objective"),
}


def slo_of(model: str, manifest: Any, override: Mapping[str, float] | None = None) -> ModelSLO:
    """Targets of one model, from its manifest's `slo` block (duck-typed: imaging or LLM)."""
    values = dict(manifest.slo.model_dump())
    unknown = set(override or {}) - set(values)
    if unknown:
        raise ValueError(f"{model}: override of unknown SLO fields {sorted(unknown)}")
    values.update(override or {})
    targets = tuple(
        LatencyTarget(metric, float(values[field]), float(values[objective]))
        for field, (metric, objective) in _FIELDS.items()
        if field in values
    )
    if not targets:
        raise ValueError(f"{model}: manifest SLO names no latency threshold")
    source = "manifest"
    if override:
        source = "profile override: " + ", ".join(f"{k}={v:g}" for k, v in override.items())
    return ModelSLO(model, targets, float(values["availability_objective"]), source)


@dataclass(frozen=True)
class MetricResult:
    target: LatencyTarget
    samples: int
    percentiles: dict[float, float]
    under: float  # fraction of samples at or under the threshold

    @property
    def met(self) -> bool:
        return self.samples > 0 and self.under >= self.target.objective


@dataclass(frozen=True)
class ModelResult:
    slo: ModelSLO
    requests: int
    succeeded: int
    not_sent: int
    duration_s: float
    metrics: tuple[MetricResult, ...]
    errors: dict[str, int]
    send_lag_p99_s: float = math.nan  # the load generator's own lateness (see Record.lag_s)

    @property
    def throughput(self) -> float:
        return self.succeeded / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_ratio(self) -> float:
        return (self.requests - self.succeeded) / self.requests if self.requests else 0.0

    @property
    def within_budget(self) -> bool:
        return self.requests > 0 and self.error_ratio <= self.slo.error_budget

    @property
    def passed(self) -> bool:
        return self.within_budget and all(m.met for m in self.metrics)

    def failures(self) -> list[str]:
        """Why the model failed, one line per reason (empty when it passed)."""
        if self.requests == 0:
            return ["no requests were measured"]
        out = []
        if not self.within_budget:
            out.append(
                f"error ratio {self.error_ratio:.4f} over budget {self.slo.error_budget:.4f}"
            )
        for m in self.metrics:
            if not m.met:
                out.append(f"{m.target.metric}: {m.under:.4f} under {m.target.threshold_s:g} s, "
                           f"objective {m.target.objective:g} ({m.samples} samples)")
        return out


def _samples(metric: str, records: Iterable[Record]) -> list[float]:
    ok = [r for r in records if r.ok]
    if metric == "ttft":
        return [r.ttft_s for r in ok if r.ttft_s is not None]
    if metric == "itl":
        return [gap for r in ok for gap in r.itl_s]
    return [r.latency_s for r in ok if r.latency_s is not None]


def evaluate(slo: ModelSLO, records: Sequence[Record], duration_s: float) -> ModelResult:
    metrics = []
    for target in slo.targets:
        values = _samples(target.metric, records)
        under = sum(1 for v in values if v <= target.threshold_s) / len(values) if values else 0.0
        metrics.append(MetricResult(
            target, len(values), {q: percentile(values, q) for q in PERCENTILES}, under
        ))
    return ModelResult(
        slo=slo,
        requests=len(records),
        succeeded=sum(1 for r in records if r.ok),
        not_sent=sum(1 for r in records if r.error == NOT_SENT),
        duration_s=duration_s,
        metrics=tuple(metrics),
        errors=failure_kinds(records),
        send_lag_p99_s=percentile([r.lag_s for r in records if r.lag_s is not None], 99),
    )
