"""Dynamic batching of one imaging model replica: where concurrent requests become one forward
pass.

The path of a tensor: the gateway admits the request (serving/gateway/admission.py), Serve
routes it to a replica, the replica decodes and preprocesses it, and `Batcher` queues it with
Serve's `@serve.batch`: the queue flushes at `batching.max_batch_size` items or after
`batching.batch_wait_timeout_ms`, whichever comes first (both from the manifest). The flushed
list goes to the backend in one call (list in, list out; the torch backend concatenates it
into one tensor, the Triton backend sends it as one request) and each caller gets its own
output back with the time it queued and the batch's inference time.
"""

from __future__ import annotations

import time

import numpy as np
from ray import serve

from serving.backends.base import Backend
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
        return await self._run((x, time.perf_counter()))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)  # set from the manifest above
    async def _run(
        self, items: list[tuple[np.ndarray, float]]
    ) -> list[tuple[np.ndarray, float, float]]:
        start = time.perf_counter()
        outputs = await self.backend.run([x for x, _ in items])
        infer_s = time.perf_counter() - start
        self.metrics.batch([start - queued for _, queued in items], infer_s)
        return [(y, start - queued, infer_s) for (_, queued), y in zip(items, outputs, strict=True)]
