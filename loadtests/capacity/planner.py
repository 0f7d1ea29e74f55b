"""Capacity planner: a rollout's peak traffic and measured per-replica profiles in, replicas,
GPUs, cost and autoscaling bounds per model out.

Each model becomes a queue (loadtests.capacity.queueing.Station) fitted from its profile:
- imaging, batching (`batching.max_batch_size` > 1): each replica a batch server. A batch of
  k takes what the profile measured at concurrency k: k closed-loop clients move in lockstep,
  so each round is one batch of k, and its p50 latency is that batch's time end to end;
- imaging, one request at a time: one slot per replica, deterministic service D = 1 /
  saturated throughput, plus the unloaded latency that is not the bottleneck (network,
  decode) as a fixed offset;
- LLM: as many slots per replica as the highest concurrency whose inter-token p99 met the
  ITL objective, D = mean stream duration there, TTFT at that concurrency as the offset.
Replicas are the fewest for which P(latency <= threshold) >= objective at the peak rate plus
headroom (simulated M/D/c or batch-server latencies); GPUs follow from the manifest's GPU
fraction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from loadtests.capacity.profiler import Level, ModelProfile
from loadtests.capacity.queueing import Arrivals, Station
from loadtests.report.slo import LatencyTarget, slo_of
from loadtests.traffic.rollout import Rollout

HOURS_PER_MONTH = 730.0


@dataclass(frozen=True)
class Fit:
    station: Station
    target: LatencyTarget  # the latency the queue decides (end to end, or TTFT)
    basis: str  # what the fit rests on, for the report


def batch_times(levels: list[Level], limit: int) -> tuple[float, ...]:
    """Seconds for a batch of 1..limit: the p50 at that concurrency, linear in between and
    extended past the last concurrency profiled along its last segment."""
    known = sorted((lv.concurrency, lv.p50_s) for lv in levels)
    out = []
    for k in range(1, limit + 1):
        lower = [p for p in known if p[0] <= k] or known[:1]
        upper = [p for p in known if p[0] >= k] or known[-1:]
        (k0, s0), (k1, s1) = lower[-1], upper[0]
        if k0 == k1 and len(known) > 1 and k > known[-1][0]:  # past the last level
            (k0, s0), (k1, s1) = known[-2], known[-1]
        out.append(s0 if k1 == k0 else s0 + (s1 - s0) * (k - k0) / (k1 - k0))
    return tuple(out)


def fit(profile: ModelProfile, manifest: Any, max_batch: int | None = None) -> Fit:
    """`max_batch`: the replica's batch limit (default: the manifest's)."""
    slo = slo_of(profile.model, manifest)
    targets = {t.metric: t for t in slo.targets}
    levels = [lv for lv in profile.levels if lv.throughput > 0]
    if not levels:
        raise ValueError(f"{profile.model}: the profile has no successful level")
    batching = getattr(manifest, "batching", None)  # LLM manifests batch in their engine
    limit = int(max_batch or (batching.max_batch_size if batching is not None else 1))
    if profile.kind != "chat" and limit > 1:
        batches = batch_times(levels, limit)
        top = max(k / t for k, t in enumerate(batches, 1))
        station = Station(1.0 / top, 1, 0.0, batch_s=batches)
        basis = (f"batches of 1..{limit} in {batches[0] * 1e3:.0f}..{batches[-1] * 1e3:.0f} ms "
                 f"(at most {top:.2f}/s)")
        return Fit(station, targets["latency"], basis)
    if profile.kind != "chat":
        best = max(levels, key=lambda lv: lv.throughput)
        first = min(levels, key=lambda lv: lv.concurrency)
        service = 1.0 / best.throughput
        station = Station(service, 1, max(0.0, first.p50_s - service))
        basis = (f"saturated {best.throughput:.2f}/s at concurrency {best.concurrency}, "
                 f"unloaded p50 {first.p50_s * 1e3:.0f} ms")
        return Fit(station, targets["latency"], basis)
    itl = targets["itl"]
    within = [lv for lv in levels if lv.itl_p99_s is not None and lv.itl_p99_s <= itl.threshold_s
              and lv.errors == 0]
    chosen = max(within or [min(levels, key=lambda lv: lv.concurrency)],
                 key=lambda lv: lv.concurrency)
    station = Station(chosen.mean_s, chosen.concurrency, chosen.ttft_p50_s or 0.0,
                      counts_service=False)
    basis = (f"{chosen.concurrency} streams/replica (ITL p99 "
             f"{(chosen.itl_p99_s or math.nan) * 1e3:.0f} ms), stream {chosen.mean_s:.2f} s")
    return Fit(station, targets["ttft"], basis)


@dataclass(frozen=True)
class ModelPlan:
    model: str
    fit: Fit
    peak_rps: float
    plan_rps: float  # peak x (1 + headroom)
    max_rps_per_replica: float  # within the SLO
    replicas: int | None  # None: no replica count meets the SLO (offset over the threshold)
    min_replicas: int
    target_ongoing: float
    gpus_per_replica: float

    @property
    def gpus(self) -> float:
        return (self.replicas or 0) * self.gpus_per_replica


def _mean_in_flight_time(station: Station, lam: float, arrivals: Arrivals) -> float:
    """Mean time a request is in flight at the replica (wait and the whole service)."""
    whole = replace(station, counts_service=True)
    if lam <= 0:
        return whole.offset_s + (whole.batch_s[0] if whole.batch_s else whole.service_s)
    latencies = whole.latencies(lam, 1, arrivals)
    return sum(latencies) / len(latencies)


def plan_model(profile: ModelProfile, manifest: Any, rollout: Rollout,
               arrivals: Arrivals) -> ModelPlan:
    f = fit(profile, manifest)
    st, t = f.station, f.target
    headroom = 1.0 + rollout.capacity.headroom
    peak = rollout.peak_rps(profile.model)
    per_replica = st.max_rate(1, t.threshold_s, t.objective, arrivals)
    replicas = st.replicas_for(peak * headroom, t.threshold_s, t.objective, arrivals)
    trough = st.replicas_for(rollout.trough_rps(profile.model) * headroom, t.threshold_s,
                             t.objective, arrivals)
    # The autoscaler's set point: in-flight requests of one replica run `headroom` below its
    # SLO limit (Little's law: ongoing = rate x mean latency).
    operating = per_replica / headroom
    target = operating * _mean_in_flight_time(st, operating, arrivals)
    return ModelPlan(
        model=profile.model, fit=f, peak_rps=peak, plan_rps=peak * headroom,
        max_rps_per_replica=per_replica, replicas=replicas,
        min_replicas=max(1, min(trough or 1, replicas or 1)),
        target_ongoing=round(max(target, 0.5), 2),
        gpus_per_replica=float(manifest.resources.gpus),
    )


@dataclass(frozen=True)
class Plan:
    rollout: Rollout
    models: list[ModelPlan]

    @property
    def gpus(self) -> int:
        # Fractional replicas of different models share GPUs (Ray packs GPU fractions).
        return math.ceil(sum(m.gpus for m in self.models) - 1e-9)

    @property
    def cost_per_month(self) -> float:
        return self.gpus * self.rollout.capacity.gpu_hour_cost * HOURS_PER_MONTH

    def overlay(self) -> dict[str, Any]:
        """Recommended autoscaling bounds, keyed like the manifests' `scaling` blocks."""
        return {
            "rollout": self.rollout.name,
            "models": {
                m.model: {"scaling": {
                    "min_replicas": m.min_replicas,
                    "max_replicas": m.replicas,
                    "target_ongoing_requests": m.target_ongoing,
                }}
                for m in self.models if m.replicas is not None
            },
        }


def make_plan(rollout: Rollout, profiles: list[ModelProfile], manifests: dict[str, Any],
              arrivals: Arrivals | None = None) -> Plan:
    arrivals = arrivals or Arrivals.make()
    wanted = set(rollout.models)
    return Plan(rollout, [plan_model(p, manifests[p.model], rollout, arrivals)
                          for p in profiles if p.model in wanted and p.model in manifests])
