"""Gateway deployment: the FastAPI ingress that validates requests and delegates to models."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from serving.config import ClusterConfig, ModelManifest
from serving.errors import MedserveError, ModelNotFound, QueueTimeout, Unavailable
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
        self, target: Target, method: str, *args: Any, timeout_s: float | None = None
    ) -> Any:
        """Call a model deployment, turning Serve's failure modes into domain errors."""
        timeout_s = timeout_s or self.config.http.request_timeout_s
        response = target.handle.options(method_name=method).remote(*args)
        name = target.manifest.name
        try:
            return await asyncio.wait_for(response, timeout_s)
        except TimeoutError:
            response.cancel()
            raise QueueTimeout(f"{name} did not answer within {timeout_s:g} s") from None
        except BackPressureError:
            raise Unavailable(f"{name} is at capacity; retry later", retry_after_s=1) from None
        except RayTaskError as exc:
            if isinstance(exc.cause, MedserveError):
                raise exc.cause from None
            raise
        except (ActorDiedError, ActorUnavailableError, DeploymentUnavailableError):
            raise Unavailable(f"{name} replica unavailable; retry", retry_after_s=1) from None

    async def ready(self, target: Target) -> bool:
        try:
            return bool(await self.call(target, "ready", timeout_s=READY_TIMEOUT_S))
        except MedserveError:
            return False
