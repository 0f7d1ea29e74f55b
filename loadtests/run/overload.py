"""Overload run: mixed stat/routine chest X-rays at a multiple of the measured capacity.

First the served capacity is measured closed-loop (the model kept busy, nothing shed); then
requests arrive open-loop (Poisson, `loadtests.generator.openloop.arrivals`) at `factor` times
that rate, one in `stat_every` stat and the rest routine. Used by `benchmarks/overload.py` and
`tests/integration/test_overload.py`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from loadtests.generator.openloop import arrivals
from loadtests.report.stats import percentile
from serving.protocol.headers import PRIORITY as PRIORITY_HEADER
from serving.testing.samples import make_png

PREDICT = "/v1/imaging/{model}/predict"


@dataclass
class Outcome:
    priority: str
    status: int  # 0: no HTTP answer (connection error or client timeout)
    latency_s: float
    retry_after: str | None
    body: str  # error bodies only (Medserve's own messages, no request content)


async def send(client: httpx.AsyncClient, method: str, path: str, priority: str,
               **kwargs: Any) -> Outcome:
    start = time.perf_counter()
    headers = {PRIORITY_HEADER: priority, **kwargs.pop("headers", {})}
    try:
        r = await client.request(method, path, headers=headers, **kwargs)
    except httpx.HTTPError as exc:
        return Outcome(priority, 0, time.perf_counter() - start, None, type(exc).__name__)
    return Outcome(priority, r.status_code, time.perf_counter() - start,
                   r.headers.get("retry-after"), r.text if r.status_code >= 400 else "")


def _ms(outcomes: Iterable[Outcome], q: float) -> float:
    """The q-th percentile latency of `outcomes`, in milliseconds (NaN for none)."""
    return percentile([o.latency_s for o in outcomes], q) * 1e3


async def open_loop(rate_per_s: float, duration_s: float, seed: int,
                    priority_of: Callable[[int], str],
                    request: Callable[[str], Coroutine[Any, Any, Outcome]]) -> list[Outcome]:
    """Requests leave at Poisson arrival times whatever the answers (open loop)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks: list[asyncio.Task[Outcome]] = []
    times = arrivals(lambda _: rate_per_s, rate_per_s, duration_s, random.Random(seed))
    for i, t in enumerate(times):
        delay = start + t - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # the arrival schedule, not synchronisation
        tasks.append(asyncio.create_task(request(priority_of(i))))
    return list(await asyncio.gather(*tasks))


@dataclass
class OverloadRun:
    capacity_per_s: float
    offered_per_s: float
    outcomes: list[Outcome]

    def of(self, priority: str, *statuses: int) -> list[Outcome]:
        return [o for o in self.outcomes if o.priority == priority and o.status in statuses]

    @property
    def shed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status in (429, 503)]

    @property
    def refused(self) -> list[Outcome]:
        """Shed on arrival: the queue was full of equal or higher priorities."""
        return [o for o in self.shed if "queue is full" in o.body]

    @property
    def preempted(self) -> list[Outcome]:
        """Queued, then evicted by a higher-priority arrival."""
        return [o for o in self.shed if "higher-priority" in o.body]

    def figures(self) -> dict[str, float]:
        stat, routine = self.of("stat", 200), self.of("routine", 200)
        return {
            "capacity_per_s": self.capacity_per_s,
            "offered_per_s": self.offered_per_s,
            "requests": len(self.outcomes),
            "stat_ok": len(stat),
            "stat_not_ok": sum(o.priority == "stat" and o.status != 200 for o in self.outcomes),
            "routine_ok": len(routine), "shed": len(self.shed),
            "refused": len(self.refused), "preempted": len(self.preempted),
            "stat_p50_ms": _ms(stat, 50),
            "stat_p95_ms": _ms(stat, 95),
            "routine_ok_p95_ms": _ms(routine, 95),
            "refused_p50_ms": _ms(self.refused, 50),
            "refused_p99_ms": _ms(self.refused, 99),
            "preempted_p50_ms": _ms(self.preempted, 50),
            "preempted_p99_ms": _ms(self.preempted, 99),
        }


async def _capacity(request: Callable[[str], Coroutine[Any, Any, Outcome]], concurrency: int,
                    n: int) -> float:
    """Served requests per second, closed loop at `concurrency` (after a warm-up)."""
    done: list[Outcome] = []

    async def worker(k: int) -> None:
        for _ in range(k):
            done.append(await request("routine"))

    await asyncio.gather(*(worker(2) for _ in range(concurrency)))
    start = time.perf_counter()
    await asyncio.gather(*(worker(max(1, n // concurrency)) for _ in range(concurrency)))
    rate = concurrency * max(1, n // concurrency) / (time.perf_counter() - start)
    failed = [(o.status, o.body[:120]) for o in done if o.status != 200]
    if failed:
        raise RuntimeError(f"capacity run had failures: {failed[:3]}")
    return rate


def run_overload(url: str, *, model: str = "cxr-triage", factor: float = 3.0,
                 duration_s: float = 6.0, stat_every: int = 10, concurrency: int = 4,
                 seed: int = 0) -> OverloadRun:
    png = make_png()
    path = PREDICT.format(model=model)

    async def main() -> OverloadRun:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            async def request(priority: str) -> Outcome:
                return await send(client, "POST", path, priority, content=png,
                                  headers={"Content-Type": "image/png"})

            capacity = await _capacity(request, concurrency, 12 * concurrency)
            outcomes = await open_loop(
                factor * capacity, duration_s, seed,
                lambda i: "stat" if i % stat_every == 0 else "routine", request,
            )
        return OverloadRun(capacity, factor * capacity, outcomes)

    return asyncio.run(main())
