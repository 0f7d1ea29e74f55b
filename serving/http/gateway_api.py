"""What the HTTP layer needs from the gateway: a small Protocol, so `serving.http` depends on
the request path's interface, never on the Serve deployment that implements it
(`serving.gateway.router.Router`, served by `serving.deployments.gateway.Gateway`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from serving.gateway.targets import LLMTarget, Target
from serving.jobs.service import StudyJobs
from serving.protocol.priority import Priority
from serving.repository.store import Repository
from serving.schema.cluster import ClusterConfig
from serving.schema.imaging import ModelManifest
from serving.schema.llm import LLMManifest


class GatewayAPI(Protocol):
    config: ClusterConfig
    repo: Repository
    jobs: StudyJobs  # study jobs: analyse a study in the PACS, or one sent over STOW-RS

    @property
    def manifests(self) -> Mapping[str, ModelManifest]: ...

    @property
    def llm_manifests(self) -> Mapping[str, LLMManifest]: ...

    def resolve(self, model: str, version: str | None = None) -> Target: ...

    def resolve_llm(self, model: str) -> LLMTarget: ...

    def routed_targets(self) -> list[Target | LLMTarget]: ...

    async def call(
        self, target: Target | LLMTarget, method: str, *args: Any,
        priority: Priority = Priority.ROUTINE, timeout_s: float | None = None,
    ) -> Any: ...

    async def stream(
        self, target: LLMTarget, method: str, *args: Any, priority: Priority = Priority.ROUTINE
    ) -> AsyncIterator[Any]: ...

    async def ready(self, target: Target | LLMTarget) -> bool: ...

    async def load_adapter(self, model: str, adapter: str, path: str) -> None: ...

    async def unload_adapter(self, model: str, adapter: str) -> None: ...

    async def load_model(self, name: str) -> None: ...

    async def unload_model(self, name: str) -> None: ...
