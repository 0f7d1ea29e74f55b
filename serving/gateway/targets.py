"""What a request resolves to: a (model, version) and the handle of the deployment serving it."""

from __future__ import annotations

from dataclasses import dataclass

from ray.serve.handle import DeploymentHandle

from serving.schema.imaging import ModelManifest
from serving.schema.llm import LLMManifest


def handle_key(model: str, version: str) -> str:
    return f"{model}/{version}"


def split_key(key: str) -> tuple[str, str]:
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
