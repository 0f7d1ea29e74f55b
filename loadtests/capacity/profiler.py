"""Per-replica profiles: throughput and latency vs concurrency (HTTP) and vs batch size.

The concurrency sweep is closed-loop on purpose: it measures what one replica can do (its
saturated throughput, its unloaded latency), not what a user sees; the open-loop gate does
that. The batch sweep runs the model's own backend in this process. Profiles are saved as
JSON so a plan can be recomputed, or made on another machine, without re-measuring.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtests.generator.workloads import (
    API_KEY_ENV,
    bearer,
    chat_body,
    imaging_bodies,
    path_of,
    token_times,
)
from loadtests.report.stats import percentile
from loadtests.run.local import one_replica_server
from loadtests.traffic.profiles import Kind, Payloads, all_manifests, kind_of

IMAGING_LEVELS = (1, 2, 4, 8, 16)
CHAT_LEVELS = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class Level:
    concurrency: int
    throughput: float  # successful requests per second
    mean_s: float
    p50_s: float
    p99_s: float
    errors: int
    ttft_p50_s: float | None = None  # chat only
    itl_p99_s: float | None = None


@dataclass(frozen=True)
class BatchPoint:
    batch: int
    throughput: float  # items per second, in-process
    latency_s: float  # one batch


@dataclass(frozen=True)
class ModelProfile:
    model: str
    kind: Kind
    levels: list[Level]
    batches: list[BatchPoint] = field(default_factory=list)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ModelProfile:
        return cls(raw["model"], raw["kind"], [Level(**x) for x in raw["levels"]],
                   [BatchPoint(**x) for x in raw.get("batches", [])])


def save(path: Path, profiles: list[ModelProfile], machine: str) -> None:
    path.write_text(json.dumps({"machine": machine, "models": [asdict(p) for p in profiles]},
                               indent=2))


def load(path: Path) -> tuple[list[ModelProfile], str]:
    """Profiles and the machine they were measured on."""
    raw = json.loads(path.read_text())
    return [ModelProfile.from_json(m) for m in raw["models"]], str(raw.get("machine", "?"))


async def _imaging(client: httpx.AsyncClient, path: str, body: bytes, ctype: str) -> float:
    start = time.perf_counter()
    (await client.post(path, content=body, headers={"Content-Type": ctype})).raise_for_status()
    return time.perf_counter() - start


async def _chat(client: httpx.AsyncClient, path: str, body: bytes,
                ) -> tuple[float, float | None, list[float]]:
    """Latency, time to first token and inter-token gaps of one streamed chat turn."""
    start = time.perf_counter()
    headers = {"Content-Type": "application/json"}
    async with client.stream("POST", path, content=body, headers=headers) as resp:
        resp.raise_for_status()
        stamped = [(time.perf_counter(), line) async for line in resp.aiter_lines()]
    times = token_times(stamped)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return time.perf_counter() - start, (times[0] - start) if times else None, gaps


async def _level(url: str, model: str, kind: Kind, payloads: Payloads, adapters: list[str],
                 concurrency: int, seconds: float) -> Level:
    rng = random.Random(concurrency)
    bodies = [] if kind == "chat" else imaging_bodies(kind, payloads)
    path = path_of(kind, model)
    lat: list[float] = []
    ttfts: list[float] = []
    itls: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency + 2)
    # The profiled server may have auth on: $MEDSERVE_API_KEY, as for `medserve loadtest`.
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits,
                                 headers=bearer(os.environ.get(API_KEY_ENV))) as client:
        async def call() -> None:
            nonlocal errors
            try:
                if kind == "chat":
                    body = chat_body(model, adapters, payloads, rng)
                    t, ttft, gaps = await _chat(client, path, body)
                    ttfts.extend([ttft] if ttft is not None else [])
                    itls.extend(gaps)
                else:
                    body, ctype = rng.choice(bodies)
                    t = await _imaging(client, path, body, ctype)
                lat.append(t)
            except (httpx.HTTPError, ConnectionError):
                errors += 1

        await asyncio.gather(*(call() for _ in range(concurrency)))  # warm-up: connections
        lat.clear()
        ttfts.clear()
        itls.clear()
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < stop:
                await call()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return Level(
        concurrency, len(lat) / elapsed, sum(lat) / max(len(lat), 1), percentile(lat, 50),
        percentile(lat, 99), errors,
        percentile(ttfts, 50) if kind == "chat" else None,
        percentile(itls, 99) if kind == "chat" else None,
    )


def profile_http(url: str, model: str, kind: Kind, payloads: Payloads, adapters: list[str],
                 seconds: float, levels: tuple[int, ...] | None = None) -> list[Level]:
    levels = levels or (CHAT_LEVELS if kind == "chat" else IMAGING_LEVELS)
    return [asyncio.run(_level(url, model, kind, payloads, adapters, c, seconds))
            for c in levels]


def profile_batches(repo: Any, model: str, seconds: float) -> list[BatchPoint]:
    """Items/s vs batch size of the model's backend in this process (imaging models whose
    manifest batches: a CT volume is one sliding-window pass, its batch is always 1)."""
    import numpy as np

    from serving.backends.torch_backend import TorchBackend

    m = repo.manifest(model)
    if m.batching.max_batch_size <= 1 or m.preprocessing.kind != "radiograph":
        return []
    v = m.version(m.served_version)
    threads = m.resources.threads or max(1, int(m.resources.cpus))
    backend = TorchBackend(m, v, repo.verify(model, v), "cpu", threads)
    shape = [1 if d == -1 else d for d in m.inputs[0].shape]
    x1 = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    points = []
    batch = 1
    while batch <= m.batching.max_batch_size:
        xb = np.repeat(x1, batch, axis=0)
        backend.run_sync([xb])  # warm-up
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            backend.executor.submit(backend.run_sync, [xb]).result()  # the inference thread
            done += 1
        elapsed = time.perf_counter() - start
        points.append(BatchPoint(batch, done * batch / elapsed, elapsed / done))
        batch *= 2
    backend.executor.shutdown()
    return points


def profile_models(models: list[str], repository: Any, host: str | None, seconds: float,
                   say: Callable[[str], None] = print) -> list[ModelProfile]:
    """Profile every model over HTTP at `host`, or on a local one-replica Medserve, and its
    backend's batch sizes in this process."""
    manifests = all_manifests(repository)
    with contextlib.ExitStack() as stack:
        url = host or stack.enter_context(one_replica_server(repository.root, models)).url
        result = []
        for name in models:
            kind = kind_of(manifests[name])
            adapters = [a.name for a in getattr(manifests[name], "adapters", [])]
            say(f"profiling {name} ({kind}) at {url} ...")
            levels = profile_http(url, name, kind, Payloads(), adapters, seconds)
            batches = [] if kind == "chat" else profile_batches(repository, name,
                                                                min(seconds, 3.0))
            result.append(ModelProfile(name, kind, levels, batches))
    return result
