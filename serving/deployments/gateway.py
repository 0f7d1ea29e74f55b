"""Gateway deployment: the FastAPI ingress that validates requests and delegates to models."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from serving.config import ClusterConfig, ModelManifest
from serving.errors import MedserveError, ModelNotFound, QueueTimeout, Unavailable
from serving.llm.manifest import LLMManifest
from serving.repository import load_repository

log = logging.getLogger("ray.serve")

READY_TIMEOUT_S = 2.0


def handle_key(model: str, version: str) -> str:
    return f"{model}/{version}"


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
        raise
    except (ActorDiedError, ActorUnavailableError, DeploymentUnavailableError):
        raise Unavailable(
            f"{name} replica unavailable; retry", retry_after_s=1,
            reason="replica_unavailable",
        ) from None


@serve.deployment
@serve.ingress()
class Gateway:
    def __init__(
        self, repo_root: str, config: dict[str, Any], handles: dict[str, DeploymentHandle]
    ) -> None:
        self.repo = load_repository(Path(repo_root))
        self.config = ClusterConfig.model_validate(config)
        self.handles = handles

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
            raise ModelNotFound(f"The model {model!r} does not exist")
        handle = self.handles.get(handle_key(name, manifest.served_version))
        if handle is None:
            raise ModelNotFound(f"model {name!r} is not served")
        if adapter:
            handle = handle.options(multiplexed_model_id=adapter)
        return LLMTarget(manifest, manifest.served_version, handle, adapter or None)

    def resolve(self, model: str, version: str | None = None) -> Target:
        manifest = self.repo.models.get(model)
        if manifest is None:
            raise ModelNotFound(f"unknown model {model!r}")
        label = version or manifest.served_version
        handle = self.handles.get(handle_key(model, label))
        if handle is None:
            raise ModelNotFound(f"model {model!r} has no served version {label!r}")
        return Target(manifest, label, handle)

    async def call(
        self, target: Target | LLMTarget, method: str, *args: Any, timeout_s: float | None = None
    ) -> Any:
        """Call a model deployment, turning Serve's failure modes into domain errors."""
        timeout_s = timeout_s or self.config.http.request_timeout_s
        response = target.handle.options(method_name=method).remote(*args)
        name = target.manifest.name
        with _serve_errors(name):
            try:
                return await asyncio.wait_for(response, timeout_s)
            except TimeoutError:
                response.cancel()
                raise QueueTimeout(f"{name} did not answer within {timeout_s:g} s") from None

    async def stream(self, target: LLMTarget, method: str, *args: Any) -> AsyncIterator[Any]:
        """Open a streaming call; its first item arrives within the request timeout or 504.

        Awaits that first item before returning, so errors raised before any output (bad
        input, unknown adapter, capacity) surface here as status codes, not mid-stream.
        """
        timeout_s = self.config.http.request_timeout_s
        name = target.manifest.name
        response: DeploymentResponseGenerator[Any] = target.handle.options(  # type: ignore[assignment]
            method_name=method, stream=True
        ).remote(*args)
        with _serve_errors(name):
            try:
                first = await asyncio.wait_for(response.__anext__(), timeout_s)
            except TimeoutError:
                response.cancel()
                raise QueueTimeout(f"{name} did not answer within {timeout_s:g} s") from None

        async def rest() -> AsyncIterator[Any]:
            done = False
            try:
                yield first
                with _serve_errors(name):
                    async for item in response:
                        yield item
                done = True
            finally:
                if not done:  # the client went away: cancel the replica's generator too
                    response.cancel()

        return rest()

    async def ready(self, target: Target | LLMTarget) -> bool:
        try:
            return bool(await self.call(target, "ready", timeout_s=READY_TIMEOUT_S))
        except MedserveError:
            return False
