"""Canary traffic splits: which version an unpinned request goes to, and how a split change
reaches the running gateway without restarting any replica.

The split lives in each manifest's `traffic` (next to `versions` and `default_version`, where
a platform engineer adds the version being canaried). It reaches the gateway as the Gateway
deployment's Serve `user_config`, never as an init argument or a model deployment option, so
a split change (a canary step, a rollback) is a Serve in-place update: `reconfigure` on the
live gateway replicas, no replica restarted, no request dropped. Everything else in the
repository is folded into `revision`, an application-builder argument: a change there (a new
version, new weights) changes Serve's code version, so Serve rebuilds and rolls the app.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serving.repository.store import Repository
from serving.schema.imaging import ModelManifest
from serving.schema.llm import LLMManifest

USER_CONFIG_KEY = "traffic"


class Routing(BaseModel):
    """The Gateway's `user_config`: the live traffic split of each imaging model."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    traffic: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="model -> version -> weight (positive weights only)."
    )

    @field_validator("traffic")
    @classmethod
    def _positive(cls, v: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        for model, split in v.items():
            if not split or any(w <= 0 for w in split.values()):
                raise ValueError(f"traffic of {model!r} needs positive weights")
        return v


def routing(repo: Repository) -> Routing:
    return Routing(traffic={name: m.traffic_split for name, m in repo.models.items()})


def pick(split: Mapping[str, int], rng: random.Random) -> str:
    """One version, chosen with probability proportional to its weight."""
    labels: Sequence[str] = list(split)
    return rng.choices(labels, weights=[split[label] for label in labels])[0]


def revision(repo: Repository, config_path: str | None) -> str:
    """Digest of everything the application is built from except the traffic splits."""
    digest = hashlib.sha256()
    manifests: list[ModelManifest | LLMManifest] = [*repo.models.values(), *repo.llms.values()]
    for manifest in manifests:
        doc = manifest.model_dump(mode="json", exclude={"traffic"})
        digest.update(json.dumps(doc, sort_keys=True).encode())
    if config_path is not None and Path(config_path).is_file():
        digest.update(Path(config_path).read_bytes())
    return digest.hexdigest()[:16]
