"""Typed schemas for the two sources of truth: each model's manifest and the cluster config.

Everything else (the Serve application, the `serve deploy` YAML, KubeRay's serveConfigV2,
metrics buckets, load-test SLOs) is derived from these, so unknown keys are errors here,
found when the file is loaded rather than when a request arrives.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.k8s.settings import KubernetesConfig

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

OIP_DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                 "INT64", "FP16", "FP32", "FP64")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(Strict):
    name: str = Field(description="Tensor name as seen on the Open Inference Protocol.")
    datatype: Literal[OIP_DATATYPES] = Field(  # type: ignore[valid-type]
        description="OIP datatype name, e.g. FP32."
    )
    shape: list[int] = Field(description="Shape; -1 means any size along that axis.")

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int]) -> list[int]:
        if not shape or any(d < -1 or d == 0 for d in shape):
            raise ValueError("shape must be non-empty, each dimension positive or -1")
        return shape


class Architecture(Strict):
    name: Literal["densenet121", "nodule-centernet"] = Field(
        description="Network family the weights belong to (see serving/networks.py)."
    )
    params: dict[str, int | float | list[int]] = Field(
        default_factory=dict, description="Constructor arguments of the network."
    )


class RadiographPreprocessing(Strict):
    kind: Literal["radiograph"] = "radiograph"
    spatial_size: tuple[int, int] = Field((224, 224), description="Model input size (H, W).")
    mean: float = Field(0.5, description="Intensity mean subtracted after scaling to [0, 1].")
    std: float = Field(0.25, gt=0, description="Intensity std divided after scaling.")


class CTPreprocessing(Strict):
    kind: Literal["ct"] = "ct"
    hu_window: tuple[float, float] = Field((-1000.0, 400.0), description="HU clip range.")
    target_spacing_mm: tuple[float, float, float] = Field(
        (2.0, 2.0, 2.0), description="Resampled voxel size (x, y, z) in mm."
    )
    min_slices: int = Field(3, ge=1, description="Fewest instances accepted as a volume.")
    roi_size: tuple[int, int, int] = Field((64, 64, 64), description="Sliding-window ROI.")
    sw_batch_size: int = Field(2, ge=1, description="Windows per sliding-window forward pass.")
    overlap: float = Field(0.25, ge=0, lt=1, description="Sliding-window overlap fraction.")
    score_threshold: float = Field(0.5, ge=0, le=1, description="Lowest candidate score kept.")
    max_candidates: int = Field(10, ge=1, description="Most candidates returned per scan.")
    min_distance_mm: float = Field(5.0, ge=0, description="NMS radius between candidates.")


Preprocessing = Annotated[RadiographPreprocessing | CTPreprocessing, Field(discriminator="kind")]


class Weights(Strict):
    file: str = Field(description="Weights file, relative to the version folder.")
    format: Literal["safetensors", "state_dict", "torchscript"] = Field(
        "safetensors", description="How the file is loaded."
    )
    sha256: str = Field(description="Expected SHA-256 of the file; checked at load.")
    demo_seed: int | None = Field(
        None, description="If set, `medserve build-weights` makes demo weights from this seed."
    )

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _SHA256.match(v):
            raise ValueError("sha256 must be 64 lowercase hex characters")
        return v

    @field_validator("file")
    @classmethod
    def _relative(cls, v: str) -> str:
        if v.startswith("/") or ".." in v.split("/"):
            raise ValueError("weights file must be a relative path inside the version folder")
        return v


class ModelVersion(Strict):
    version: str = Field(description="Version label, also the folder name under the model.")
    weights: Weights = Field(description="Weights of this version.")

    @field_validator("version")
    @classmethod
    def _label(cls, v: str) -> str:
        if not _VERSION.match(v):
            raise ValueError("version must be 1-32 characters of letters, digits, '.', '_', '-'")
        return v


class Batching(Strict):
    max_batch_size: int = Field(8, ge=1, description="Largest batch `@serve.batch` forms.")
    batch_wait_timeout_ms: float = Field(
        5.0, ge=0, description="How long a partial batch waits for more requests."
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


class SLO(Strict):
    latency_threshold_s: float = Field(gt=0, description="End-to-end latency threshold.")
    latency_objective: float = Field(
        0.99, gt=0, lt=1, description="Fraction of requests that must be under the threshold."
    )
    availability_objective: float = Field(
        0.999, gt=0, lt=1, description="Fraction of requests that must not fail with 5xx."
    )


class TritonSettings(Strict):
    """How Triton serves a model whose `backend` is `triton` (`medserve build-triton`)."""

    max_queue_delay_ms: float | None = Field(
        None, ge=0,
        description="Triton's dynamic batcher wait for a fuller batch (default: batching's).",
    )
    priority_levels: int = Field(
        2, ge=0, le=16, description="Dynamic-batching priority levels, 1 most urgent; 0: none."
    )
    default_priority_level: int | None = Field(
        None, ge=1, description="Level of requests that name none (default: the lowest)."
    )
    instance_count: int = Field(
        1, ge=1, description="Model instances per Triton server (instance_group count)."
    )
    timeout_s: float = Field(
        10.0, gt=0, description="Deadline of one call to Triton; past it the request gets 503."
    )

    @model_validator(mode="after")
    def _levels(self) -> TritonSettings:
        level = self.default_priority_level
        if level is not None and not 1 <= level <= self.priority_levels:
            raise ValueError("default_priority_level must be between 1 and priority_levels")
        return self


class ModelManifest(Strict):
    kind: Literal["imaging"] = Field(
        "imaging", description="Manifest schema; LLM manifests say `kind: llm`."
    )
    name: str = Field(description="Model name used in every URL.")
    task: Literal["classification", "detection"] = Field(description="What the model outputs.")
    description: str = Field("", description="One line for `medserve models` and metadata.")
    modalities: list[str] = Field(description="DICOM Modality values accepted, e.g. [CR, DX].")
    content_types: list[
        Literal["application/dicom", "image/png", "multipart/form-data", "application/zip"]
    ] = Field(description="Request body types the predict route takes.")
    labels: list[str] = Field(description="Output labels, in output-channel order.")
    architecture: Architecture
    inputs: list[TensorSpec] = Field(description="OIP input tensors (preprocessed).")
    outputs: list[TensorSpec] = Field(description="OIP output tensors.")
    preprocessing: Preprocessing
    backend: Literal["torch", "triton"] = Field("torch", description="Inference backend.")
    triton: TritonSettings = Field(
        default_factory=TritonSettings, description="Triton settings (backend: triton)."
    )
    versions: list[ModelVersion] = Field(min_length=1, description="Versions in the repository.")
    default_version: str | None = Field(None, description="Version served when none is pinned.")
    traffic: dict[str, int] | None = Field(
        None,
        description="Canary split of unpinned requests: version label -> weight (relative, "
        "e.g. percent); default: all to default_version. Changing it restarts no replica.",
    )
    batching: Batching = Field(default_factory=Batching)
    scaling: Scaling = Field(default_factory=Scaling)
    admission: Admission = Field(default_factory=Admission)
    resources: Resources = Field(default_factory=Resources)
    slo: SLO
    intended_use: str = Field(min_length=20, description="Intended-use statement on every reply.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("name must be lowercase letters, digits and '-', max 63 characters")
        return v

    @field_validator("modalities")
    @classmethod
    def _upper(cls, v: list[str]) -> list[str]:
        return [m.upper() for m in v]

    @field_validator("traffic", mode="before")
    @classmethod
    def _labels_as_text(cls, v: object) -> object:
        # YAML reads `{1: 90}` with integer keys; version labels are text.
        return {str(k): w for k, w in v.items()} if isinstance(v, dict) else v

    @field_validator("traffic")
    @classmethod
    def _weights(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        if v is not None and (any(w < 0 for w in v.values()) or sum(v.values()) <= 0):
            raise ValueError("traffic weights must be >= 0 with a positive sum")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ModelManifest:
        labels = [v.version for v in self.versions]
        if len(set(labels)) != len(labels):
            raise ValueError("version labels must be unique")
        if self.default_version is not None and self.default_version not in labels:
            raise ValueError(f"default_version {self.default_version!r} is not in versions")
        unknown = sorted(set(self.traffic or {}) - set(labels))
        if unknown:
            raise ValueError(f"traffic names versions not in versions: {', '.join(unknown)}")
        if self.task == "classification" and self.preprocessing.kind != "radiograph":
            raise ValueError("classification models take radiograph preprocessing")
        if self.task == "detection" and self.preprocessing.kind != "ct":
            raise ValueError("detection models take ct preprocessing")
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise ValueError("imaging models have exactly one input and one output tensor")
        if self.backend == "triton" and not all(v.isdigit() and int(v) > 0 for v in labels):
            raise ValueError("Triton takes positive integer version labels (backend: triton)")
        return self

    @property
    def served_version(self) -> str:
        return self.default_version or self.versions[-1].version

    @property
    def traffic_split(self) -> dict[str, int]:
        """Weights of unpinned requests by version, zero weights left out."""
        split = self.traffic or {self.served_version: 100}
        return {label: w for label, w in split.items() if w > 0}

    def version(self, label: str) -> ModelVersion:
        for v in self.versions:
            if v.version == label:
                return v
        raise KeyError(label)


class HTTPConfig(Strict):
    host: str = Field("127.0.0.1", description="Address the Serve proxy binds.")
    port: int = Field(8000, ge=0, le=65535, description="Port the Serve proxy binds.")
    request_timeout_s: float = Field(30.0, gt=0, description="Longest a request may wait (504).")
    keep_alive_timeout_s: int = Field(30, ge=1, description="Proxy keep-alive for clients.")


class Limits(Strict):
    max_instance_bytes: int = Field(64 << 20, ge=1024, description="One DICOM/PNG body (413).")
    max_series_bytes: int = Field(512 << 20, ge=1024, description="One series upload (413).")
    max_series_instances: int = Field(2000, ge=1, description="Instances in one series.")
    max_tensor_bytes: int = Field(256 << 20, ge=1024, description="One OIP infer body (413).")
    max_chat_bytes: int = Field(
        1 << 20, ge=1024, description="One chat completions JSON body (413)."
    )


class GatewayConfig(Strict):
    num_replicas: int = Field(1, ge=1, description="Gateway (FastAPI ingress) replicas.")
    cpus: float = Field(0.25, ge=0, description="Ray CPU resource per gateway replica.")
    max_ongoing_requests: int = Field(512, ge=1, description="In-flight cap per gateway.")


class AuthConfig(Strict):
    """Tenant authentication (serving/tenants.py): API keys, model allow-lists, rate limits."""

    tenants_file: str | None = Field(
        None,
        description="Tenants YAML (`medserve tenants add`); when set, every model route needs "
        "`Authorization: Bearer <key>`. $MEDSERVE_TENANTS_FILE (`medserve serve --tenants`, "
        "the Kubernetes pods) takes precedence; neither: auth off (loopback only). Each "
        "tenant's rate_per_s and burst are cluster-wide: every gateway replica enforces "
        "1/gateway.num_replicas of them with its own token bucket.",
    )


class AuditConfig(Strict):
    """Audit trail: one JSON line per request, never request content (serving/audit.py)."""

    enabled: bool = Field(True, description="Write the audit log.")
    path: str | None = Field(
        None,
        description="JSON-lines file the gateways append to; default: medserve_audit.jsonl "
        "beside Serve's own logs (<ray session>/logs/serve/) on each gateway's node.",
    )


class RayConfig(Strict):
    num_cpus: int | None = Field(
        None, ge=1, description="Logical CPU slots of the embedded Ray (default: machine cores)."
    )
    metrics_export_port: int | None = Field(None, description="Ray metrics export port.")


class ClusterConfig(Strict):
    http: HTTPConfig = Field(default_factory=HTTPConfig)
    limits: Limits = Field(default_factory=Limits)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Tenants and API keys.")
    audit: AuditConfig = Field(default_factory=AuditConfig, description="Request audit log.")
    ray: RayConfig = Field(default_factory=RayConfig)
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where models run: the GPU when present (auto), or forced."
    )
    app_name: str = Field("medserve", description="Serve application name.")
    kubernetes: KubernetesConfig = Field(
        default_factory=KubernetesConfig,
        description="KubeRay overlays: node pools, pod sizes, model store (`medserve build-k8s`).",
    )
