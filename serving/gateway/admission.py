"""Gateway admission control: per-model concurrency caps and a bounded priority queue.

Each served model gets a `ModelAdmission`: at most `capacity` calls in flight to its
deployment, and up to `max_queued` requests waiting for a slot, highest priority first (FIFO
within a priority). When the queue is full, an arriving request evicts the newest waiter of
the lowest priority below its own (that waiter gets a fast 503 + Retry-After); with no lower
waiter the arriving request is refused at once. So a stat request is only ever shed when every
queued request is stat too: never while routine requests are being admitted. A waiter whose
deadline passes gets 504 without ever reaching the model.

Everything runs on the gateway's event loop; state changes happen in plain callbacks (grant,
evict, expire), so there is no polling and no lock: a waiter just awaits its future.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from serving.errors import QueueTimeout, Unavailable
from serving.protocol.priority import Priority

# Shed reasons, fixed words for the requests-shed metric's `reason` label.
QUEUE_FULL = "queue_full"  # refused on arrival: queue full of equal or higher priorities
PREEMPTED = "preempted"  # evicted from the queue by a higher-priority arrival
QUEUE_TIMEOUT = "queue_timeout"  # waited past its deadline (504)


@dataclass(eq=False)
class _Waiter:
    priority: Priority
    seq: int
    future: asyncio.Future[None]
    timer: asyncio.TimerHandle | None = None
    live: bool = True  # False once granted, evicted, expired or cancelled (lazy heap delete)

    def __lt__(self, other: _Waiter) -> bool:  # heap order: highest priority, then oldest
        return (-self.priority, self.seq) < (-other.priority, other.seq)


@dataclass(eq=False)
class Slot:
    """A granted in-flight slot; `release()` is idempotent. A slot that is never released (a
    stream whose response never started) is given back when it is garbage collected."""

    owner: ModelAdmission
    loop: asyncio.AbstractEventLoop
    released: bool = field(default=False)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.owner._release()

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        if not self.released and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.release)


class ModelAdmission:
    def __init__(
        self, name: str, capacity: int, max_queued: int, queue_timeout_s: float,
        retry_after_s: float = 1.0,
    ) -> None:
        if capacity < 1 or max_queued < 0 or queue_timeout_s <= 0:
            raise ValueError("capacity >= 1, max_queued >= 0 and queue_timeout_s > 0 required")
        self.name = name
        self.capacity = capacity
        self.max_queued = max_queued
        self.queue_timeout_s = queue_timeout_s
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self.queued = 0  # live waiters in `_heap`
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()

    async def acquire(self, priority: Priority, timeout_s: float | None = None) -> Slot:
        """Wait for a slot: at once when one is free and nobody waits, else in the queue until
        granted (Slot), evicted or refused (Unavailable), or past the deadline (QueueTimeout).
        `timeout_s` shortens the queue deadline (e.g. to the request's remaining time)."""
        loop = asyncio.get_running_loop()
        if self.in_flight < self.capacity and self.queued == 0:
            self.in_flight += 1
            return Slot(self, loop)
        if self.queued >= self.max_queued:
            victim = self._lowest()
            if victim is None or victim.priority >= priority:
                raise self._shed(QUEUE_FULL)
            self._drop(victim, self._shed(PREEMPTED))
        waiter = _Waiter(priority, next(self._seq), loop.create_future())
        wait_s = min(self.queue_timeout_s, timeout_s or math.inf)
        waiter.timer = loop.call_later(wait_s, self._expire, waiter, wait_s)
        heapq.heappush(self._heap, waiter)
        self.queued += 1
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled() \
                    and waiter.future.exception() is None:
                self._release()  # granted just as the caller went away: pass it on
            elif waiter.live:
                self._unlink(waiter)
                self._compact()
            raise
        return Slot(self, loop)

    def _shed(self, reason: str) -> Unavailable:
        why = ("a higher-priority request took its queue slot" if reason == PREEMPTED
               else "its queue is full")
        return Unavailable(f"{self.name} is at capacity and {why}; retry later",
                           retry_after_s=self.retry_after_s, reason=reason)

    def _lowest(self) -> _Waiter | None:
        """The newest waiter of the lowest priority (O(queue), queues are short)."""
        live = [w for w in self._heap if w.live]
        return min(live, key=lambda w: (w.priority, -w.seq), default=None)

    def _unlink(self, waiter: _Waiter) -> None:
        waiter.live = False
        self.queued -= 1
        if waiter.timer is not None:
            waiter.timer.cancel()

    def _drop(self, waiter: _Waiter, error: Exception) -> None:
        self._unlink(waiter)
        if not waiter.future.done():
            waiter.future.set_exception(error)
        self._compact()

    def _expire(self, waiter: _Waiter, wait_s: float) -> None:
        if waiter.live:
            self._drop(waiter, QueueTimeout(
                f"{self.name}: no capacity within {wait_s:g} s", reason=QUEUE_TIMEOUT
            ))

    def _compact(self) -> None:
        # Dead entries are skipped lazily; rebuild when they outnumber the live ones.
        if len(self._heap) > 2 * self.queued + 8:
            self._heap = [w for w in self._heap if w.live]
            heapq.heapify(self._heap)

    def _release(self) -> None:
        """Give the slot to the best live waiter, or free it."""
        while self._heap:
            waiter = heapq.heappop(self._heap)
            if not waiter.live:
                continue
            self._unlink(waiter)
            if waiter.future.done():  # cancelled without having run its handler yet
                continue
            waiter.future.set_result(None)  # the slot passes on: in_flight is unchanged
            return
        self.in_flight -= 1

    def stats(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "in_flight": self.in_flight, "queued": self.queued}


def default_capacity(max_replicas: int, max_ongoing_requests: int, gateways: int) -> int:
    """Everything the model's replicas can hold at once, shared among the gateway replicas."""
    return max(1, math.ceil(max_replicas * max_ongoing_requests / max(1, gateways)))


class AdmissionControl:
    """One `ModelAdmission` per served (model, version) key, made from the model's manifest
    on first use (so versions added by a redeploy get one too)."""

    def __init__(self, gateways: int, request_timeout_s: float) -> None:
        self.gateways = gateways
        self.request_timeout_s = request_timeout_s
        self.models: dict[str, ModelAdmission] = {}

    def get(self, key: str, manifest: Any) -> ModelAdmission:
        """`manifest` carries `name`, `scaling` and `admission` (imaging or LLM)."""
        found = self.models.get(key)
        if found is None:
            a, s = manifest.admission, manifest.scaling
            capacity = a.max_concurrent or default_capacity(
                s.max_replicas, s.max_ongoing_requests, self.gateways
            )
            found = self.models[key] = ModelAdmission(
                manifest.name, capacity, a.max_queued,
                min(a.queue_timeout_s, self.request_timeout_s), a.retry_after_s,
            )
        return found
