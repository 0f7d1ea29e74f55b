"""Dynamic batching of one imaging model replica: where concurrent requests become one forward
pass.

The path of a tensor: the gateway admits the request (serving/gateway/admission.py), Serve
routes it to a replica, the replica decodes and preprocesses it, and `Batcher` queues it with
Serve's `@serve.batch`: the queue flushes at `batching.max_batch_size` items or after
`batching.batch_wait_timeout_ms`, whichever comes first (both from the manifest). The flushed
list goes to the backend in one call (list in, list out; the torch backend concatenates it
into one tensor, the Triton backend sends it as one request) and each caller gets its own
output back with the time it queued and the batch's inference time.

A caller that is cancelled (its client went away, its gateway timed out) marks its item
given up; once every item of a running batch is, the backend stops at its next chunk or
sliding window (`Cancelled`) instead of computing for no one, and the batch is counted in
`medserve_batches_abandoned_total`.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
from ray import serve

from serving.backends.base import Backend
from serving.cancellation import Cancelled
from serving.observability.metrics import ModelMetrics
from serving.schema.imaging import Batching


class Batcher:
    def __init__(self, backend: Backend, batching: Batching, metrics: ModelMetrics) -> None:
        self.backend = backend
        self.metrics = metrics
        self._run.set_max_batch_size(batching.max_batch_size)  # type: ignore[attr-defined]
        self._run.set_batch_wait_timeout_s(  # type: ignore[attr-defined]
            batching.batch_wait_timeout_ms / 1e3
        )

    async def __call__(self, x: np.ndarray) -> tuple[np.ndarray, float, float]:
        """One input in; its output, the seconds it queued, and the batch's inference seconds."""
        given_up = threading.Event()  # read by the backend's worker thread
        try:
            return await self._run((x, time.perf_counter(), given_up))
        except asyncio.CancelledError:
            given_up.set()
            raise

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)  # set from the manifest above
    async def _run(
        self, items: list[tuple[np.ndarray, float, threading.Event]]
    ) -> list[tuple[np.ndarray, float, float]]:
        start = time.perf_counter()
        flags = [given_up for _, _, given_up in items]
        try:
            outputs = await self.backend.run([x for x, _, _ in items],
                                             lambda: all(f.is_set() for f in flags))
        except Cancelled:
            self.metrics.abandoned.inc()
            raise
        infer_s = time.perf_counter() - start
        self.metrics.batch([start - queued for _, queued, _ in items], infer_s)
        return [(y, start - queued, infer_s)
                for (_, queued, _), y in zip(items, outputs, strict=True)]
