"""Queueing maths for the capacity planner: Erlang C (M/M/c) and M/D/c.

A replica is modelled as `slots` servers with a deterministic service time D (an imaging
replica: one slot, D = 1 / its saturated throughput; an LLM replica: as many slots as
concurrent streams it holds within its inter-token objective). Erlang C gives the M/M/c
answer in closed form; M/D/c has no simple closed form for c > 1, so its waiting-time
distribution is simulated (FIFO, Poisson arrivals), with the exact M/D/1 formula as a check.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def erlang_b(servers: int, offered: float) -> float:
    """Blocking probability of M/M/c/c with `offered` = lambda / mu Erlangs (stable recursion)."""
    b = 1.0
    for k in range(1, servers + 1):
        b = offered * b / (k + offered * b)
    return b


def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits in M/M/c; 1.0 when the system is unstable."""
    if offered >= servers:
        return 1.0
    b = erlang_b(servers, offered)
    rho = offered / servers
    return b / (1 - rho * (1 - b))


def mmc_wait_tail(servers: int, lam: float, mu: float, t: float) -> float:
    """P(W > t) in M/M/c."""
    if lam >= servers * mu:
        return 1.0
    return erlang_c(servers, lam / mu) * math.exp(-(servers * mu - lam) * t)


def mmc_mean_wait(servers: int, lam: float, mu: float) -> float:
    if lam >= servers * mu:
        return math.inf
    return erlang_c(servers, lam / mu) / (servers * mu - lam)


def md1_wait_cdf(lam: float, service_s: float, t: float) -> float:
    """Exact P(W <= t) in M/D/1 (Erlang's formula). Alternating sum: fine for t/D up to ~30."""
    rho = lam * service_s
    if rho >= 1:
        return 0.0
    if t < 0:
        return 0.0
    total = 0.0
    for k in range(int(t / service_s) + 1):
        x = lam * (k * service_s - t)  # <= 0
        total += x**k / math.factorial(k) * math.exp(-x)
    return min(1.0, max(0.0, (1 - rho) * total))


@dataclass(frozen=True)
class Arrivals:
    """Unit-rate exponential gaps, reused across rates so that searches are monotone."""

    gaps: tuple[float, ...]

    @classmethod
    def make(cls, n: int = 100_000, seed: int = 0) -> Arrivals:
        rng = random.Random(seed)
        return cls(tuple(rng.expovariate(1.0) for _ in range(n)))


def simulate_waits(
    lam: float, service: float | Callable[[], float], servers: int, arrivals: Arrivals,
    warmup: float = 0.1,
) -> list[float]:
    """Queueing delays of FIFO arrivals at rate `lam` on `servers` identical servers."""
    free = [0.0] * servers  # time each server next becomes free (a heap)
    t = 0.0
    waits = []
    skip = int(len(arrivals.gaps) * warmup)
    for i, gap in enumerate(arrivals.gaps):
        t += gap / lam
        s = service() if callable(service) else service
        earliest = free[0]
        start = earliest if earliest > t else t
        heapq.heapreplace(free, start + s)
        if i >= skip:
            waits.append(start - t)
    return waits


def fraction_within(waits: Sequence[float], budget_s: float) -> float:
    if budget_s < 0:
        return 0.0
    return sum(1 for w in waits if w <= budget_s) / len(waits)


@dataclass(frozen=True)
class Station:
    """A model's replicas as a queue: what the planner searches over."""

    service_s: float  # deterministic service time of one slot
    slots_per_replica: int  # servers per replica
    offset_s: float  # latency outside the bottleneck (network, decode, prefill...)

    def holds(
        self, lam: float, replicas: int, threshold_s: float, objective: float,
        arrivals: Arrivals,
    ) -> bool:
        """Does P(offset + W <= threshold) >= objective at rate `lam`?"""
        servers = replicas * self.slots_per_replica
        if lam <= 0:
            return self.offset_s <= threshold_s
        if lam * self.service_s >= servers:
            return False
        waits = simulate_waits(lam, self.service_s, servers, arrivals)
        return fraction_within(waits, threshold_s - self.offset_s) >= objective

    def max_rate(
        self, replicas: int, threshold_s: float, objective: float, arrivals: Arrivals,
        tolerance: float = 0.002,
    ) -> float:
        """Highest Poisson rate `replicas` hold within the objective (bisection)."""
        lo, hi = 0.0, replicas * self.slots_per_replica / self.service_s
        if not self.holds(lo, replicas, threshold_s, objective, arrivals):
            return 0.0
        while hi - lo > tolerance * hi:
            mid = (lo + hi) / 2
            if self.holds(mid, replicas, threshold_s, objective, arrivals):
                lo = mid
            else:
                hi = mid
        return lo

    def replicas_for(
        self, lam: float, threshold_s: float, objective: float, arrivals: Arrivals,
        limit: int = 100_000,
    ) -> int | None:
        """Fewest replicas that hold `lam` within the objective; None if no count can."""
        def ok(n: int) -> bool:
            return self.holds(lam, n, threshold_s, objective, arrivals)

        if self.offset_s > threshold_s:
            return None
        lo = max(1, math.ceil(lam * self.service_s / self.slots_per_replica))
        if ok(lo):
            return lo
        hi = lo * 2
        while not ok(hi):  # `ok` is monotone in n: double to an upper bound, then bisect
            if hi > limit:
                return None
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if ok(mid) else (mid, hi)
        return hi
