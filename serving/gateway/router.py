"""The gateway's request path, free of HTTP and of Serve's deployment decorators: the HTTP layer
(serving.http) calls it through `serving.http.gateway_api.GatewayAPI`; the Serve deployment
(serving.deployments.gateway) wraps it.

A request resolves to a `Target` (imaging, with the canary split applied) or an `LLMTarget`
(a chat, adapter included), then goes through the model's admission queue
(serving.gateway.admission: priority order, shedding) and the retry policy
(serving.gateway.retry) to the model's deployment handle.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from serving.errors import MedserveError, ModelNotFound, QueueTimeout
from serving.gateway.admission import AdmissionControl, ModelAdmission, Slot
from serving.gateway.retry import once_more_if_replica_lost, serve_errors
from serving.gateway.targets import LLMTarget, Target, handle_key, split_key
from serving.gateway.traffic import pick
from serving.imaging.pipeline import Payload
from serving.jobs.service import StudyJobs
from serving.observability.metrics import AdmissionMetrics, JobMetrics, latency_buckets
from serving.protocol.priority import Priority
from serving.repository.runtime_adapters import ManifestWatch, add_adapter, remove_adapter
from serving.repository.store import Repository, load_repository
from serving.schema.cluster import ClusterConfig
from serving.schema.imaging import ModelManifest
from serving.schema.llm import LLMManifest
from serving.topology.applications import AppArgs, Routing, deployment_name, model_app
from serving.topology.live import LiveRepository

log = logging.getLogger("ray.serve")

READY_TIMEOUT_S = 2.0


class Router:
    """The request path without HTTP: resolve a model name to a deployment, admit the call
    (priority queue, shedding), call it with the retry policy, and stream its output."""

    def __init__(self, args: dict[str, Any], config: dict[str, Any]) -> None:
        self.args = AppArgs.model_validate(args)
        self.repo = load_repository(Path(self.args.model_repo))
        self.config = ClusterConfig.model_validate(config)
        # Replaced by `reconfigure` (the deployment's user_config) before any request.
        self.traffic = Routing()
        self.handles: dict[str, DeploymentHandle] = {}
        # The imaging models routed to, one dict updated in place (study jobs read it).
        self.served_models: dict[str, ModelManifest] = {}
        self.live = LiveRepository(self.args, self.config, lambda: self.traffic)
        self.rng = random.Random()
        self.admission = AdmissionControl(
            self.config.gateway.num_replicas, self.config.http.request_timeout_s
        )
        self._admission_metrics: AdmissionMetrics | None = None
        self._job_metrics: JobMetrics | None = None
        # Study jobs (serving/jobs/): studies in the PACS, or sent here over STOW-RS.
        self.jobs = StudyJobs(self.config, self.served_models, self._predict_for_job)
        # LLM manifests change at run time (adapters loaded and unloaded, by any replica)
        self._watches = [ManifestWatch(self.repo.root, m) for m in self.repo.llms]
        self._adapter_lock = asyncio.Lock()

    async def _predict_for_job(
        self, model: str, payload: Payload, priority: Priority
    ) -> tuple[str, dict[str, Any]]:
        target = self.resolve(model)
        if self._job_metrics is None:  # made on first use, in the replica
            self._job_metrics = JobMetrics()
        status = 500
        try:
            result = await self.call(target, "predict", payload, priority=priority)
            status = 200
        except MedserveError as exc:
            status = exc.status_code
            raise
        finally:
            self._job_metrics.predicted(model, target.version, status)
        return target.version, result

    async def check_health(self) -> None:
        """Serve's periodic health check: also (re)starts the job workers, so a restarted
        replica takes up jobs whose replica died without waiting for a request."""
        self.jobs.runner.ensure_started()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """What to route to, applied in place: a canary step, a rollback, a model loaded or
        unloaded (serving.topology.live)."""
        new = Routing.model_validate(user_config)
        for model, split in new.traffic.items():
            missing = [v for v in split if v not in new.served.get(model, [])]
            if missing:
                raise ValueError(f"traffic of {model!r} names unserved versions {missing}")
        if new.manifests != self.traffic.manifests:
            self._set_repo(load_repository(self.repo.root))
        handles = {handle_key(m, v): self.handles.get(handle_key(m, v))
                   or DeploymentHandle(deployment_name(m, v), model_app(m, v))
                   for m, versions in new.served.items() for v in versions}
        served = {n: m for n, m in self.repo.models.items() if n in new.served}
        # Reference swaps: each request sees the old or the new routing.
        self.handles, self.traffic = handles, new
        self.served_models.clear()  # then refilled: no await in between
        self.served_models.update(served)
        log.info("routing: %s", new.traffic)

    def _set_repo(self, repo: Repository) -> None:
        self.repo = repo
        self._watches = [ManifestWatch(repo.root, m) for m in repo.llms]

    def routing(self) -> dict[str, Any]:
        """The live routing (`serving.app.run` waits until it equals what was deployed)."""
        return self.traffic.model_dump()

    @property
    def manifests(self) -> dict[str, ModelManifest]:
        return self.served_models

    @property
    def llm_manifests(self) -> dict[str, LLMManifest]:
        return {n: m for n, m in self.repo.llms.items() if n in self.traffic.served}

    async def load_model(self, name: str) -> None:
        """Triton's model load: `name` as the repository folder has it now, its files checked
        (checksums, graphs) before anything is deployed; no other model's replica restarts."""
        repo = await asyncio.to_thread(load_repository, self.repo.root)
        if name not in repo.models and name not in repo.llms:
            raise ModelNotFound("The model is not in the model repository; "
                                "GET /v2/repository/index lists it")
        await asyncio.to_thread(repo.only(name).with_backends(
            {k: v for k, v in self.args.backends.items() if k == name}).check)
        await self.live.load(repo, name)

    async def unload_model(self, name: str) -> None:
        if name not in self.traffic.served:
            raise ModelNotFound("The model is not loaded; GET /v2/repository/index lists them")
        repo = await asyncio.to_thread(load_repository, self.repo.root)
        await self.live.unload(repo, name)

    def _reread_changed_llms(self) -> None:
        if any([w.changed() for w in self._watches]):  # a list: every stamp is updated
            self.repo = load_repository(self.repo.root)

    async def load_adapter(self, model: str, adapter: str, path: str) -> None:
        """vLLM's runtime adapter load: imported into the repository (checked, sha256, fit to
        the base), then served on its first request; no replica restarts."""
        async with self._adapter_lock:
            await asyncio.to_thread(add_adapter, self.repo.root, model, adapter, Path(path))
            self._reread_changed_llms()

    async def unload_adapter(self, model: str, adapter: str) -> None:
        async with self._adapter_lock:
            await asyncio.to_thread(remove_adapter, self.repo.root, model, adapter)
            self._reread_changed_llms()

    def resolve_llm(self, model: str) -> LLMTarget:
        self._reread_changed_llms()
        name, _, adapter = model.partition(":")
        manifest = self.llm_manifests.get(name)
        if manifest is None or (adapter and adapter not in {a.name for a in manifest.adapters}):
            # Never the client's text back (it could be anything): where to find the names.
            raise ModelNotFound("The model does not exist; GET /v1/models lists the models")
        (version,) = self.traffic.served[name]
        handle = self.handles[handle_key(name, version)]
        if adapter:
            handle = handle.options(multiplexed_model_id=adapter)
        return LLMTarget(manifest, version, handle, adapter or None)

    def resolve(self, model: str, version: str | None = None) -> Target:
        manifest = self.served_models.get(model)
        if manifest is None:
            raise ModelNotFound(
                f"unknown model; this server has {', '.join(sorted(self.served_models))}"
            )
        label = version or pick(self.traffic.traffic[model], self.rng)
        handle = self.handles.get(handle_key(model, label))
        if handle is None:
            served = ", ".join(v for m, v in map(split_key, self.handles) if m == model)
            raise ModelNotFound(f"model {model!r} has no such served version; served: {served}")
        return Target(manifest, label, handle)

    def routed_targets(self) -> list[Target | LLMTarget]:
        """Every version that takes unpinned traffic (a canary too, not one picked at random),
        and every LLM: what readiness waits for."""
        targets: list[Target | LLMTarget] = [
            self.resolve(name, version) for name, m in self.manifests.items()
            for version in self.traffic.traffic.get(name, {m.served_version: 1})
        ]
        return targets + [self.resolve_llm(name) for name in self.llm_manifests]

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
            manifests = list(self.repo.all_manifests.values())
            self._admission_metrics = AdmissionMetrics(latency_buckets(manifests),
                                                       self._admission_stats)
        return self._admission_metrics

    def _admission_stats(self) -> list[tuple[str, str, int, int]]:
        # Runs on the heartbeat thread: a snapshot of the queues (ints, read atomically).
        return [(*split_key(key), a.in_flight, a.queued)
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
            return await once_more_if_replica_lost(
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
        with serve_errors(name):
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
            response, first = await once_more_if_replica_lost(
                name, method, lambda: self._open_stream(target, method, args, deadline)
            )
        except BaseException:
            slot.release()
            raise

        async def rest(slot: Slot) -> AsyncIterator[Any]:
            done = False
            try:
                yield first
                with serve_errors(name):
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
        with serve_errors(name):
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
