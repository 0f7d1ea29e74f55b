"""The job workers of one gateway replica: an asyncio loop that claims jobs from the store,
runs each under a renewed lease, and records how it ended.

Started by the gateway's health check (Serve calls it every few seconds), so a replica that
Serve restarts takes jobs up again without waiting for a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable

from serving.errors import MedserveError, Unavailable
from serving.jobs.store import JobStore
from serving.protocol.jobs import Job, JobResult, JobSkip
from serving.schema.cluster import JobsConfig

log = logging.getLogger("ray.serve")

# job, its tenant -> (results, skipped)
Analyze = Callable[[Job, str | None], Awaitable[tuple[list[JobResult], list[JobSkip]]]]


class JobRunner:
    def __init__(self, store: JobStore, config: JobsConfig, analyze: Analyze,
                 retry_delay_s: float) -> None:
        self.store = store
        self.config = config
        self.analyze = analyze
        self.retry_delay_s = retry_delay_s
        self.owner = uuid.uuid4().hex  # this replica's runs, for the lease
        self._loop_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def ensure_started(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                while len(self._running) < self.config.max_running:
                    claimed = await asyncio.to_thread(
                        self.store.claim, self.owner, self.config.lease_s,
                        self.config.max_attempts)
                    if claimed is None:
                        break
                    task = asyncio.create_task(self._run(*claimed))
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)
            except Exception as exc:  # the store is unreachable: try again next round
                log.error("job store: %s", type(exc).__name__)
            await asyncio.sleep(self.config.poll_s)

    async def _renew(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self.config.lease_s / 3)
            await asyncio.to_thread(self.store.renew, job.id, self.owner, self.config.lease_s)

    async def _run(self, job: Job, tenant: str | None) -> None:
        log.info("job %s: attempt %d", job.id, job.attempts)
        renewing = asyncio.create_task(self._renew(job))
        try:
            results, skipped = await self.analyze(job, tenant)
        except Unavailable as exc:
            if job.attempts >= self.config.max_attempts:
                await self._end(job, f"gave up after {job.attempts} attempts; last: "
                                     f"{exc.message}")
            else:
                delay = self.retry_delay_s * 2 ** (job.attempts - 1)
                await asyncio.to_thread(self.store.retry_later, job.id, self.owner,
                                        exc.message, delay)
                log.info("job %s: retry in %.0f s (%s)", job.id, delay, type(exc).__name__)
        except MedserveError as exc:
            await self._end(job, exc.message)
        except Exception as exc:  # a bug: its text may hold request data, so only its type
            log.error("job %s failed: %s", job.id, type(exc).__name__)
            await self._end(job, "internal error")
        else:
            await asyncio.to_thread(self.store.finish, job.id, self.owner, results, skipped)
            log.info("job %s: done, %d results", job.id, len(results))
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing

    async def _end(self, job: Job, reason: str) -> None:
        await asyncio.to_thread(self.store.fail, job.id, self.owner, reason)
        log.info("job %s: failed", job.id)
