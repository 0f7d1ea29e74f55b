"""Open-loop arrivals: requests leave on a Poisson schedule, whatever the server is doing.

A closed-loop user waits for each reply before sending the next request, so a stalled server
is sent less and the stall shows up in a handful of samples instead of in every request that
should have been sent meanwhile (coordinated omission). Here the schedule is fixed up front,
each request's latency is counted from its intended start, and when the in-flight cap is
reached the request is not sent and counts as a failure, so a stall cannot hide anywhere.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

NOT_SENT = "not sent: in-flight cap reached"


def arrivals(
    rate: Callable[[float], float], rate_max: float, duration_s: float, rng: random.Random
) -> Iterator[float]:
    """Intended start times (seconds from 0) of a Poisson process with intensity rate(t).

    Lewis-Shedler thinning: candidates at the constant `rate_max`, each kept with probability
    rate(t) / rate_max, which is exact for any rate(t) <= rate_max.
    """
    if rate_max <= 0:
        return
    t = 0.0
    while True:
        t += rng.expovariate(rate_max)
        if t >= duration_s:
            return
        r = rate(t)
        if r > rate_max * (1 + 1e-9):
            raise ValueError(f"rate {r:g} at t={t:g} exceeds rate_max {rate_max:g}")
        if rng.random() * rate_max < r:
            yield t


def replayed(
    first: Sequence[float], period_s: float, duration_s: float
) -> Iterator[tuple[int, float]]:
    """(pass, intended start) for the arrival times of one period replayed back to back until
    `duration_s`; one period as long as the run is the plain schedule."""
    for k in itertools.count():
        if k * period_s >= duration_s:
            return
        for t in first:
            if k * period_s + t >= duration_s:
                return
            yield k, k * period_s + t


@dataclass
class InFlight:
    """Admission for open-loop requests: at most `cap` outstanding at once."""

    cap: int
    count: int = 0
    refused: int = 0

    def try_acquire(self) -> bool:
        if self.count >= self.cap:
            self.refused += 1
            return False
        self.count += 1
        return True

    def release(self) -> None:
        self.count -= 1


@dataclass
class Record:
    """One request as the SLO report sees it. Times are seconds from the generator's start."""

    model: str
    intended_s: float
    latency_s: float | None = None  # completion - intended start; None if it never completed
    ok: bool = False
    status: int = 0
    error: str | None = None
    ttft_s: float | None = None  # streaming only: first token - intended start
    itl_s: list[float] = field(default_factory=list)  # streaming only: gaps between tokens
    priority: str = "routine"
    tenant: str = ""
    # How late the load generator itself sent the request: when this is large, the client,
    # not the server, was the bottleneck, and the run says little about the server.
    lag_s: float | None = None

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @property
    def failure(self) -> str:
        """What went wrong, in a few words ("HTTP 503", the client's exception); "" if ok."""
        return "" if self.ok else self.error or f"HTTP {self.status}"


def failure_kinds(records: Sequence[Record]) -> dict[str, int]:
    """Failed requests counted by what went wrong."""
    kinds: dict[str, int] = {}
    for r in records:
        if not r.ok:
            kinds[r.failure] = kinds.get(r.failure, 0) + 1
    return kinds


def completed(
    model: str, intended_s: float, done_s: float, status: int, error: str | None = None,
    *, ttft_s: float | None = None, itl_s: list[float] | None = None,
    priority: str = "routine", tenant: str = "", lag_s: float | None = None,
) -> Record:
    """The record of a request that got an answer: latency counted from its intended start."""
    ok = error is None and 200 <= status < 300
    return Record(model, intended_s, done_s - intended_s, ok, status, error, ttft_s,
                  itl_s or [], priority, tenant, lag_s)


def refused(
    model: str, intended_s: float, *, priority: str = "routine", tenant: str = ""
) -> Record:
    return Record(model, intended_s, None, False, 0, NOT_SENT, priority=priority, tenant=tenant)
