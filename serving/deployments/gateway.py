"""Gateway deployment: the FastAPI ingress that validates requests and delegates to models."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from serving.admission import AdmissionControl, ModelAdmission, Slot
from serving.config import ClusterConfig, ModelManifest
from serving.errors import MedserveError, ModelNotFound, QueueTimeout, Unavailable
from serving.llm.manifest import LLMManifest
from serving.metrics import AdmissionMetrics, latency_buckets
from serving.priority import Priority
from serving.repository import load_repository
from serving.traffic import Routing, pick, routing

log = logging.getLogger("ray.serve")

READY_TIMEOUT_S = 2.0
REPLICA_LOST = "replica_unavailable"  # shed reason of a call whose replica died
T = TypeVar("T")


def handle_key(model: str, version: str) -> str:
    return f"{model}/{version}"


def _split_key(key: str) -> tuple[str, str]:
    model, _, version = key.rpartition("/")
    return model, version


@dataclass(frozen=True)
class Target:
    """A resolved (model, version) and the handle of the deployment serving it."""

    manifest: ModelManifest
    version: str
    handle: DeploymentHandle


@dataclass(frozen=True)
class LLMTarget:
    """A resolved OpenAI `model` (`<llm>` or `<llm>:<adapter>`) and its deployment handle."""

    manifest: LLMManifest
    version: str
    handle: DeploymentHandle  # already routed to the adapter's replicas when one is asked for
    adapter: str | None

    @property
    def model_id(self) -> str:
        return self.manifest.name + (f":{self.adapter}" if self.adapter else "")


@contextlib.contextmanager
def _serve_errors(name: str) -> Iterator[None]:
    """Serve's failure modes as domain errors (queue timeouts are the caller's to time)."""
    try:
        yield
    except BackPressureError:
        raise Unavailable(
            f"{name} is at capacity; retry later", retry_after_s=1, reason="at_capacity"
        ) from None
    except RayTaskError as exc:
        if isinstance(exc.cause, MedserveError):
            raise exc.cause from None
        if isinstance(exc.cause, RayActorError):  # e.g. a dead actor behind the replica
            raise _replica_lost(name) from None
        raise
    except (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError):
        # RayActorError covers ActorDiedError (replica process gone) and
        # ActorUnavailableError (unreachable for now).
        raise _replica_lost(name) from None


def _replica_lost(name: str) -> Unavailable:
    return Unavailable(f"{name} replica unavailable; retry", retry_after_s=1, reason=REPLICA_LOST)


async def _once_more_if_replica_lost(
    name: str, method: str, attempt: Callable[[], Awaitable[T]]
) -> T:
    """Run `attempt`; if its replica died before answering, run it once more (Serve's router
    has dropped the dead replica by then). Any other error, or a second loss, propagates."""
    try:
        return await attempt()
    except Unavailable as exc:
        if exc.shed_reason != REPLICA_LOST:
            raise
    log.warning("%s: replica lost during %s; retrying once", name, method)
    return await attempt()


@serve.deployment
@serve.ingress()
class Gateway:
    def __init__(
        self, repo_root: str, config: dict[str, Any], handles: dict[str, DeploymentHandle]
    ) -> None:
        self.repo = load_repository(Path(repo_root))
        self.config = ClusterConfig.model_validate(config)
        self.handles = handles
        # Replaced by `reconfigure` (the deployment's user_config) before any request.
        self.traffic = routing(self.repo)
        self.rng = random.Random()
        self.admission = AdmissionControl(
            self.config.gateway.num_replicas, self.config.http.request_timeout_s
        )
        self._admission_metrics: AdmissionMetrics | None = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """A new traffic split, applied in place (a canary step or a rollback)."""
        new = Routing.model_validate(user_config)
        for model, split in new.traffic.items():
            missing = [v for v in split if handle_key(model, v) not in self.handles]
            if missing:
                raise ValueError(f"traffic of {model!r} names unserved versions {missing}")
        self.traffic = new  # one reference swap: each request sees the old or the new split
        log.info("traffic split: %s", new.traffic)

    def routing(self) -> dict[str, Any]:
        """The live split (`serving.app.run` waits until it equals what was deployed)."""
        return self.traffic.model_dump()

    def __serve_build_asgi_app__(self) -> FastAPI:
        from serving.api import create_app

        return create_app(self)

    @property
    def manifests(self) -> dict[str, ModelManifest]:
        return self.repo.models

    @property
    def llm_manifests(self) -> dict[str, LLMManifest]:
        return self.repo.llms

    def resolve_llm(self, model: str) -> LLMTarget:
        name, _, adapter = model.partition(":")
        manifest = self.repo.llms.get(name)
        if manifest is None or (adapter and adapter not in {a.name for a in manifest.adapters}):
            # Never the client's text back (it could be anything): where to find the names.
            raise ModelNotFound("The model does not exist; GET /v1/models lists the models")
        handle = self.handles.get(handle_key(name, manifest.served_version))
        if handle is None:
            raise ModelNotFound(f"model {name!r} is not served")
        if adapter:
            handle = handle.options(multiplexed_model_id=adapter)
        return LLMTarget(manifest, manifest.served_version, handle, adapter or None)

    def resolve(self, model: str, version: str | None = None) -> Target:
        manifest = self.repo.models.get(model)
        if manifest is None:
            raise ModelNotFound(
                f"unknown model; this server has {', '.join(sorted(self.repo.models))}"
            )
        split = self.traffic.traffic.get(model)
        label = version or (pick(split, self.rng) if split else manifest.served_version)
        handle = self.handles.get(handle_key(model, label))
        if handle is None:
            served = ", ".join(v for m, v in map(_split_key, self.handles) if m == model)
            raise ModelNotFound(f"model {model!r} has no such served version; served: {served}")
        return Target(manifest, label, handle)

    def admission_for(self, target: Target | LLMTarget) -> ModelAdmission:
        return self.admission.get(handle_key(target.manifest.name, target.version),
                                  target.manifest)

    async def _admit(
        self, target: Target | LLMTarget, priority: Priority, timeout_s: float
    ) -> Slot:
        start = time.monotonic()
        slot = await self.admission_for(target).acquire(priority, timeout_s)
        self._metrics().admitted(target.manifest.name, target.version, priority.label,
                                 time.monotonic() - start)
        return slot

    def _metrics(self) -> AdmissionMetrics:
        # Made on first use: Ray's metric objects need the replica this runs in.
        if self._admission_metrics is None:
            manifests = [*self.repo.models.values(), *self.repo.llms.values()]
            self._admission_metrics = AdmissionMetrics(latency_buckets(manifests),
                                                       self._admission_stats)
        return self._admission_metrics

    def _admission_stats(self) -> list[tuple[str, str, int, int]]:
        # Runs on the heartbeat thread: a snapshot of the queues (ints, read atomically).
        return [(*_split_key(key), a.in_flight, a.queued)
                for key, a in list(self.admission.models.items())]

    async def call(
        self, target: Target | LLMTarget, method: str, *args: Any,
        priority: Priority = Priority.ROUTINE, timeout_s: float | None = None,
    ) -> Any:
        """Call a model deployment through admission control (priority queue, shedding).

        A unary call whose replica dies is sent once more (inference is idempotent; Serve's
        router has dropped the dead replica) before it becomes a retryable 503. The request
        timeout covers the queue wait and both attempts.
        """
        timeout_s = timeout_s or self.config.http.request_timeout_s
        deadline = time.monotonic() + timeout_s
        with await self._admit(target, priority, timeout_s):
            return await _once_more_if_replica_lost(
                target.manifest.name, method,
                lambda: self._invoke(target, method, args, deadline),
            )

    async def _invoke(
        self, target: Target | LLMTarget, method: str, args: tuple[Any, ...], deadline: float
    ) -> Any:
        """One call, no admission: Serve's failure modes as domain errors, 504 past deadline."""
        name = target.manifest.name
        timeout_s = max(0.0, deadline - time.monotonic())
        response = target.handle.options(method_name=method).remote(*args)
        with _serve_errors(name):
            try:
                return await asyncio.wait_for(response, timeout_s)
            except TimeoutError:
                response.cancel()
                raise QueueTimeout(f"{name} did not answer in time") from None

    async def stream(
        self, target: LLMTarget, method: str, *args: Any, priority: Priority = Priority.ROUTINE
    ) -> AsyncIterator[Any]:
        """Open a streaming call; its first item arrives within the request timeout or 504.

        Awaits that first item before returning, so errors raised before any output (bad
        input, unknown adapter, capacity) surface here as status codes, not mid-stream. The
        stream holds an admission slot until it ends. A replica lost before the first item
        is retried once (nothing was sent yet); one lost mid-stream raises a retryable
        Unavailable, which the route reports in-band.
        """
        timeout_s = self.config.http.request_timeout_s
        deadline = time.monotonic() + timeout_s
        name = target.manifest.name
        slot = await self._admit(target, priority, timeout_s)
        try:
            response, first = await _once_more_if_replica_lost(
                name, method, lambda: self._open_stream(target, method, args, deadline)
            )
        except BaseException:
            slot.release()
            raise

        async def rest(slot: Slot) -> AsyncIterator[Any]:
            done = False
            try:
                yield first
                with _serve_errors(name):
                    async for item in response:
                        yield item
                done = True
            finally:
                slot.release()
                if not done:  # the client went away: cancel the replica's generator too
                    response.cancel()

        return rest(slot)

    async def _open_stream(
        self, target: LLMTarget, method: str, args: tuple[Any, ...], deadline: float
    ) -> tuple[DeploymentResponseGenerator[Any], Any]:
        name = target.manifest.name
        response: DeploymentResponseGenerator[Any] = target.handle.options(  # type: ignore[assignment]
            method_name=method, stream=True
        ).remote(*args)
        with _serve_errors(name):
            try:
                first = await asyncio.wait_for(
                    response.__anext__(), max(0.0, deadline - time.monotonic())
                )
            except TimeoutError:
                response.cancel()
                raise QueueTimeout(f"{name} did not answer in time") from None
        return response, first

    async def ready(self, target: Target | LLMTarget) -> bool:
        # Not admitted: readiness must answer even while the model's queue is full.
        try:
            return bool(await self._invoke(
                target, "ready", (), time.monotonic() + READY_TIMEOUT_S
            ))
        except MedserveError:
            return False
