"""Queueing maths for the capacity planner: Erlang C (M/M/c), M/D/c and batch servers.

A replica is modelled as `slots` servers with a deterministic service time D (an imaging
replica that does not batch: one slot, D = 1 / its saturated throughput; an LLM replica: as
many slots as concurrent streams it holds within its inter-token objective). Erlang C gives
the M/M/c answer in closed form; M/D/c has no simple closed form for c > 1, so its
waiting-time distribution is simulated (FIFO, Poisson arrivals), with the exact M/D/1 formula
as a check. A replica that batches (`@serve.batch`) is a batch server: when free it takes
every waiting request up to its batch limit, and all of them finish together after the
batch's service time, which grows with the batch (on a CPU, nearly in proportion). Under load
batches fill up, so every request in one waits for the whole batch: M/D/1 with the saturated
per-item time would miss exactly that part of the tail.
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


def simulate_batches(
    lam: float, batch_s: Sequence[float], servers: int, arrivals: Arrivals,
    warmup: float = 0.1,
) -> list[float]:
    """Sojourn times (wait + service) of Poisson arrivals at `servers` batch servers that
    share one FIFO queue: a free server takes up to `len(batch_s)` waiting requests and
    finishes them together `batch_s[k - 1]` seconds later for a batch of k."""
    limit = len(batch_s)
    times = []
    t = 0.0
    for gap in arrivals.gaps:
        t += gap / lam
        times.append(t)
    free = [0.0] * servers  # a heap of the times the servers next become free
    sojourns: list[float] = []
    i, n = 0, len(times)
    while i < n:
        start = max(free[0], times[i])
        j = i
        while j < n and j - i < limit and times[j] <= start:
            j += 1
        done = start + batch_s[j - i - 1]
        heapq.heapreplace(free, done)
        sojourns.extend(done - a for a in times[i:j])
        i = j
    return sojourns[int(len(sojourns) * warmup):]


def fraction_within(waits: Sequence[float], budget_s: float) -> float:
    if budget_s < 0:
        return 0.0
    return sum(1 for w in waits if w <= budget_s) / len(waits)


@dataclass(frozen=True)
class Station:
    """A model's replicas as a queue: what the planner searches over.

    The latency judged is offset + wait, plus the service itself when `counts_service` (an
    imaging request's latency ends with its forward pass; an LLM's TTFT does not wait for
    the stream to end). With `batch_s` each replica is one batch server instead, and the
    latency is offset + its sojourn (wait + its batch's service)."""

    service_s: float  # deterministic service time of one slot (per item, when saturated)
    slots_per_replica: int  # servers per replica
    offset_s: float  # latency outside the bottleneck (network, decode, prefill...)
    counts_service: bool = True
    batch_s: tuple[float, ...] = ()  # service of a batch of 1, 2, ... items

    @property
    def per_slot_rate(self) -> float:
        """Most requests per second one slot completes."""
        if self.batch_s:
            return max(k / s for k, s in enumerate(self.batch_s, 1))
        return 1.0 / self.service_s

    def latencies(self, lam: float, replicas: int, arrivals: Arrivals) -> list[float]:
        servers = replicas * self.slots_per_replica
        if self.batch_s:
            return [self.offset_s + x
                    for x in simulate_batches(lam, self.batch_s, servers, arrivals)]
        base = self.offset_s + (self.service_s if self.counts_service else 0.0)
        return [base + w for w in simulate_waits(lam, self.service_s, servers, arrivals)]

    def holds(
        self, lam: float, replicas: int, threshold_s: float, objective: float,
        arrivals: Arrivals,
    ) -> bool:
        """Does P(latency <= threshold) >= objective at rate `lam`?"""
        if lam <= 0:
            unloaded = self.batch_s[0] if self.batch_s else (
                self.service_s if self.counts_service else 0.0)
            return self.offset_s + unloaded <= threshold_s
        if lam >= replicas * self.slots_per_replica * self.per_slot_rate:
            return False
        latencies = self.latencies(lam, replicas, arrivals)
        return fraction_within(latencies, threshold_s) >= objective

    def max_rate(
        self, replicas: int, threshold_s: float, objective: float, arrivals: Arrivals,
        tolerance: float = 0.002,
    ) -> float:
        """Highest Poisson rate `replicas` hold within the objective (bisection)."""
        lo, hi = 0.0, replicas * self.slots_per_replica * self.per_slot_rate
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

        if not self.holds(0.0, 1, threshold_s, objective, arrivals):
            return None  # even an idle replica answers too late
        lo = max(1, math.ceil(lam / (self.slots_per_replica * self.per_slot_rate)))
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
