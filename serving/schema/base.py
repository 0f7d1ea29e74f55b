"""What every manifest and config file shares: strict models, name rules, the deployment knobs
(replicas, admission, resources) and weights files.

Unknown keys are errors (`extra="forbid"`), found when a file is loaded rather than when a
request arrives.
"""

from __future__ import annotations

import re
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _sha256_hex(v: str) -> str:
    if not SHA256.match(v):
        raise ValueError("sha256 must be 64 lowercase hex characters")
    return v


def _relative_file(v: str) -> str:
    if v.startswith("/") or ".." in v.split("/"):
        raise ValueError("weights file must be a relative path inside the version folder")
    return v


Sha256Hex = Annotated[str, AfterValidator(_sha256_hex)]  # a file's expected SHA-256
RelativeFile = Annotated[str, AfterValidator(_relative_file)]  # inside its version folder


class Weights(Strict):
    file: RelativeFile = Field(description="Weights file, relative to the version folder.")
    format: Literal["safetensors", "state_dict", "torchscript", "onnx", "monai_bundle"] = Field(
        "safetensors",
        description="How the file is loaded: safetensors or state_dict (weights of the "
        "manifest's architecture), torchscript (the architecture's backbone, or the whole "
        "network when the manifest names no architecture), onnx (the whole network, run by "
        "ONNX Runtime), monai_bundle (models/model.ts or models/model.pt of the MONAI bundle "
        "that is the version folder).",
    )
    sha256: Sha256Hex = Field(description="Expected SHA-256 of the file; checked at load.")
    demo_seed: int | None = Field(
        None, description="If set, `medserve build-weights` makes demo weights from this seed."
    )


class Scaling(Strict):
    min_replicas: int = Field(1, ge=0, description="Autoscaling lower bound.")
    max_replicas: int = Field(1, ge=1, description="Autoscaling upper bound.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at deploy time.")
    target_ongoing_requests: float = Field(
        4.0, gt=0, description="Autoscaler target of in-flight requests per replica."
    )
    max_ongoing_requests: int = Field(16, ge=1, description="In-flight cap per replica.")
    max_queued_requests: int = Field(
        64, ge=-1, description="Caller-side queue cap; past it requests get 503 (-1: none)."
    )
    # Ray's own defaults; a demo or test on a small machine sets seconds instead.
    upscale_delay_s: float = Field(
        30.0, ge=0, description="Load must stay above target this long before scaling up."
    )
    downscale_delay_s: float = Field(
        600.0, ge=0, description="Load must stay below target this long before scaling down."
    )
    look_back_period_s: float = Field(
        30.0, gt=10,
        description="Window the autoscaler averages in-flight requests over (Ray: > 10 s).",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Scaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class Admission(Strict):
    """Gateway admission control of one model: a cap on calls in flight to its deployment and
    a bounded priority queue in front of it (limits are per gateway replica).

    Past `max_queued` an arriving request evicts the newest queued request of a lower
    priority (503 + Retry-After) or, if there is none, is refused at once; a queued request
    that waits `queue_timeout_s` gets 504 without ever reaching the model."""

    max_concurrent: int | None = Field(
        None, ge=1,
        description="Calls in flight to the model at once; default: max_replicas x "
        "max_ongoing_requests, so the gateway sheds before Serve's own queue fills.",
    )
    max_queued: int = Field(
        64, ge=0, description="Requests waiting for a slot, all priorities together."
    )
    queue_timeout_s: float = Field(
        10.0, gt=0,
        description="Longest wait for a slot (504 past it); capped by http.request_timeout_s.",
    )
    retry_after_s: float = Field(
        1.0, gt=0, description="Retry-After sent with a 503 when a request is shed."
    )


class Resources(Strict):
    cpus: float = Field(1.0, ge=0, description="Ray CPU resource per replica.")
    gpus: float = Field(0.0, ge=0, le=8, description="GPU (fraction) per replica where present.")
    threads: int | None = Field(None, ge=1, description="Torch intra-op threads (default: cpus).")


class ModelVersion(Strict):
    """One version of a model: its folder under the model and its weights."""

    version: str = Field(description="Version label, also the folder name under the model.")
    weights: Weights = Field(description="Weights of this version (an LLM's base checkpoint).")

    @field_validator("version")
    @classmethod
    def _label(cls, v: str) -> str:
        if not VERSION.match(v):
            raise ValueError("version must be 1-32 characters of letters, digits, '.', '_', '-'")
        return v


V = TypeVar("V", bound=ModelVersion)


class ManifestBase(Strict, Generic[V]):
    """What every manifest says, imaging or LLM: the name, the versions and which is served,
    the deployment knobs, and the intended-use statement every reply carries."""

    name: str = Field(description="Model name: in every URL, and the OpenAI `model` of chats.")
    description: str = Field("", description="One line for `medserve models` and metadata.")
    versions: list[V] = Field(min_length=1, description="Versions in the repository.")
    default_version: str | None = Field(
        None, description="Version served when a request pins none (default: the last listed)."
    )
    scaling: Scaling = Field(default_factory=Scaling)
    admission: Admission = Field(default_factory=Admission)
    resources: Resources = Field(default_factory=Resources)
    intended_use: str = Field(min_length=20, description="Intended-use statement on every reply.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("name must be lowercase letters, digits and '-', max 63 characters")
        return v

    @model_validator(mode="after")
    def _versions(self) -> ManifestBase[V]:
        labels = [v.version for v in self.versions]
        if len(set(labels)) != len(labels):
            raise ValueError("version labels must be unique")
        if self.default_version is not None and self.default_version not in labels:
            raise ValueError(f"default_version {self.default_version!r} is not in versions")
        return self

    @property
    def served_version(self) -> str:
        return self.default_version or self.versions[-1].version

    def version(self, label: str) -> V:
        for v in self.versions:
            if v.version == label:
                return v
        raise KeyError(label)
