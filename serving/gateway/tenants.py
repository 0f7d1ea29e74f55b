"""Tenants: who may call Medserve, which models they may use, and how fast.

The tenants file (YAML; `medserve tenants add` writes it, Kubernetes mounts it from the
`medserve-tenants` Secret at $MEDSERVE_TENANTS_FILE):

    tenants:
      - name: clinic-a
        key_sha256: <SHA-256 hex of the API key>
        models: [cxr-triage, "clinical-llm:lung-oncology"]   # "*": every model
        rate_per_s: 5.0        # null: unlimited
        burst: 10
        max_priority: urgent   # stat | urgent | routine

Only the SHA-256 of a key is stored. A fast hash is enough here, unlike for passwords: keys
are 32 random bytes (`secrets.token_urlsafe`), so there is nothing to guess from a leaked
hash, and a slow KDF would only add its cost to every request.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from serving.errors import ModelLoadError

TENANTS_ENV = "MEDSERVE_TENANTS_FILE"
KEY_BYTES = 32
ALL_MODELS = "*"
_TENANT = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_MODEL = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}(:[A-Za-z0-9][A-Za-z0-9._-]{0,63})?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Tenant(BaseModel):
    """One tenant; the auth layer puts it on `request.state.tenant`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Tenant name: lowercase letters, digits, '-'; in audit logs.")
    key_sha256: str = Field(repr=False, description="SHA-256 hex of the API key.")
    models: list[str] = Field(
        min_length=1,
        description="Models it may call: names, `<llm>:<adapter>` for one adapter only, or "
        "'*' for every model.",
    )
    rate_per_s: float | None = Field(
        None, gt=0,
        description="Sustained requests per second, cluster-wide (null: unlimited). Buckets "
        "are per gateway replica, so each enforces rate_per_s / gateway.num_replicas.",
    )
    burst: int | None = Field(
        None, ge=1,
        description="Requests allowed at once after idling (token bucket size, also divided "
        "among gateway replicas); default: one second's worth, at least 1.",
    )
    max_priority: Literal["stat", "urgent", "routine"] = Field(
        "stat", description="Highest X-Priority honoured; higher requests are capped to it."
    )
    admin: bool = Field(
        False, description="May load and unload LLM adapters at run time "
        "(`POST /v1/load_lora_adapter`, `/v1/unload_lora_adapter`).",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _TENANT.match(v):
            raise ValueError("name must be lowercase letters, digits and '-', max 63 characters")
        return v

    @field_validator("key_sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _SHA256.match(v):
            raise ValueError("key_sha256 must be 64 lowercase hex characters")
        return v

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m != ALL_MODELS and not _MODEL.match(m)]
        if bad:
            raise ValueError(f"not a model name: {', '.join(bad)}")
        return v

    def allows(self, model: str) -> bool:
        """A base LLM name allows its adapters too; `<llm>:<adapter>` allows that one only."""
        if ALL_MODELS in self.models or model in self.models:
            return True
        base, adapter, _ = model.partition(":")
        return bool(adapter) and base in self.models

    @property
    def bucket_size(self) -> float:
        if self.burst is not None:
            return float(self.burst)
        return float(max(1, math.ceil(self.rate_per_s or 1)))


class TenantsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tenants: list[Tenant] = Field(default_factory=list, description="Tenants and their keys.")

    @model_validator(mode="after")
    def _unique(self) -> TenantsFile:
        names = [t.name for t in self.tenants]
        if len(set(names)) != len(names):
            raise ValueError("tenant names must be unique")
        if len({t.key_sha256 for t in self.tenants}) != len(self.tenants):
            raise ValueError("two tenants share one API key")
        return self


def new_key() -> str:
    return secrets.token_urlsafe(KEY_BYTES)


def key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def tenants_path(configured: str | None) -> str | None:
    """$MEDSERVE_TENANTS_FILE (set by `medserve serve --tenants` for its Ray processes, and by
    the Kubernetes pod spec), else the cluster config's `auth.tenants_file`."""
    return os.environ.get(TENANTS_ENV) or configured or None


def load_tenants(path: Path) -> TenantsFile:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return TenantsFile.model_validate(raw)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read tenants file ({exc.strerror})") from None
    except yaml.YAMLError:
        raise ModelLoadError(f"{path}: tenants file is not valid YAML") from None
    except ValidationError as exc:
        # Locations and messages only: the input values may be key hashes.
        where = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ModelLoadError(f"{path}: {where}") from None


def save_tenants(path: Path, tenants: TenantsFile) -> None:
    """Atomic replace, readable by the owner only (it lists who may call which model)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(tenants.model_dump(mode="json"), sort_keys=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Keyring:
    """Finds the tenant of a presented API key."""

    def __init__(self, tenants: Iterable[Tenant]) -> None:
        self._entries = [(bytes.fromhex(t.key_sha256), t) for t in tenants]

    def authenticate(self, key: str | None) -> Tenant | None:
        if not key:
            return None
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        # Every stored hash is compared, in constant time each, with no early exit: the time
        # taken says nothing about which (or whether any) tenant matched.
        for stored, tenant in self._entries:
            if hmac.compare_digest(stored, digest):
                found = tenant
        return found


class TokenBucket:
    """`rate` tokens a second up to `size`; each request takes one. Not thread-safe: the
    gateway calls it from its event loop only."""

    def __init__(
        self, rate: float, size: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.size, self.clock = rate, size, clock
        self.tokens = size
        self.updated = clock()

    def take(self) -> float:
        """0 if a token was taken; else the seconds until one will be there."""
        now = self.clock()
        self.tokens = min(self.size, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    """One token bucket per rate-limited tenant, holding this gateway replica's share."""

    def __init__(
        self, tenants: Iterable[Tenant], replicas: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.buckets = {
            t.name: TokenBucket(t.rate_per_s / replicas, max(1.0, t.bucket_size / replicas), clock)
            for t in tenants if t.rate_per_s is not None
        }

    def wait_s(self, tenant: Tenant) -> float:
        """0 if the tenant may go now; else the seconds until it may."""
        bucket = self.buckets.get(tenant.name)
        return bucket.take() if bucket else 0.0
