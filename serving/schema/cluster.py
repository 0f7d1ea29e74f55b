"""The cluster config (`medserve.yaml`): HTTP, limits, gateway, auth, audit, Ray, Kubernetes.

With the model manifests it is the one source of truth everything else is derived from (the
Serve application, the `serve deploy` YAML, KubeRay's serveConfigV2).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from serving.schema.base import Strict
from serving.schema.kubernetes import KubernetesConfig


class HTTPConfig(Strict):
    host: str = Field("127.0.0.1", description="Address the Serve proxy binds.")
    port: int = Field(8000, ge=0, le=65535, description="Port the Serve proxy binds.")
    request_timeout_s: float = Field(30.0, gt=0, description="Longest a request may wait (504).")
    keep_alive_timeout_s: int = Field(30, ge=1, description="Proxy keep-alive for clients.")
    docs: bool = Field(
        True,
        description="Serve the OpenAPI description (/openapi.json, /docs, /redoc). They stay "
        "open with auth on (they describe the API, never data); false removes them.",
    )


class Limits(Strict):
    max_instance_bytes: int = Field(64 << 20, ge=1024, description="One DICOM/PNG body (413).")
    max_series_bytes: int = Field(512 << 20, ge=1024, description="One series upload (413).")
    max_series_instances: int = Field(2000, ge=1, description="Instances in one series.")
    max_tensor_bytes: int = Field(256 << 20, ge=1024, description="One OIP infer body (413).")
    max_chat_bytes: int = Field(
        1 << 20, ge=1024, description="One chat completions JSON body (413)."
    )
    upload_timeout_s: float = Field(
        600.0, gt=0,
        description="Longest one request body may take to arrive (408 beyond): timed apart "
        "from http.request_timeout_s, which starts once the body is in. 600 s carries "
        "max_series_bytes over a 10 Mbit/s clinic link.",
    )


class GatewayConfig(Strict):
    num_replicas: int = Field(1, ge=1, description="Gateway (FastAPI ingress) replicas.")
    cpus: float = Field(0.25, ge=0, description="Ray CPU resource per gateway replica.")
    max_ongoing_requests: int = Field(512, ge=1, description="In-flight cap per gateway.")


class AuthConfig(Strict):
    """Tenant authentication (serving/gateway/tenants.py): API keys, model allow-lists and
    rate limits."""

    tenants_file: str | None = Field(
        None,
        description="Tenants YAML (`medserve tenants add`); when set, every model route needs "
        "`Authorization: Bearer <key>`. $MEDSERVE_TENANTS_FILE (`medserve serve --tenants`, "
        "the Kubernetes pods) takes precedence; neither: auth off (loopback only). Each "
        "tenant's rate_per_s and burst are cluster-wide: every gateway replica enforces "
        "1/gateway.num_replicas of them with its own token bucket.",
    )


class AuditConfig(Strict):
    """Audit trail: one JSON line per request, never request content (serving/gateway/audit.py)."""

    enabled: bool = Field(True, description="Write the audit log.")
    path: str | None = Field(
        None,
        description="JSON-lines file the gateways append to; default: medserve_audit.jsonl "
        "beside Serve's own logs (<ray session>/logs/serve/) on each gateway's node.",
    )


class PacsConfig(Strict):
    """The hospital's PACS, over DICOMweb (QIDO-RS, WADO-RS, STOW-RS): where `analyze` jobs read
    studies from and store their DICOM SR results to (serving/dicomweb/)."""

    url: str = Field(
        pattern=r"^https?://", description="DICOMweb base URL, e.g. http://pacs:8042/dicom-web."
    )
    username_env: str | None = Field(
        None, description="Environment variable holding the HTTP basic-auth user name."
    )
    password_env: str | None = Field(
        None, description="Environment variable holding the HTTP basic-auth password."
    )
    timeout_s: float = Field(
        30.0, gt=0, description="Deadline of one DICOMweb call; past it the PACS is 'slow'."
    )
    attempts: int = Field(
        4, ge=1, le=20, description="Tries of one DICOMweb call before it fails (back-off)."
    )
    backoff_s: float = Field(
        1.0, gt=0, description="First wait between tries; it doubles, capped at 30 s."
    )


class JobsConfig(Strict):
    """Study analysis jobs (`POST /v1/studies/{uid}/analyze`): a durable store and workers
    in the gateway replicas (serving/jobs/)."""

    store_path: str | None = Field(
        None,
        description="SQLite file of the jobs; every gateway replica must see the same file "
        "(one node, or a shared volume). Default: medserve_jobs.sqlite in the Ray session "
        "directory, which survives replica restarts but not a new Ray cluster.",
    )
    max_running: int = Field(2, ge=1, description="Jobs one gateway replica runs at a time.")
    lease_s: float = Field(
        30.0, ge=1,
        description="A running job's lease, renewed while it runs; a job whose replica died "
        "is taken up again by any gateway once it expires.",
    )
    max_attempts: int = Field(
        3, ge=1, description="Runs of one job (replica lost, PACS down) before it fails."
    )
    poll_s: float = Field(1.0, gt=0, description="How often an idle worker looks for jobs.")


class RayConfig(Strict):
    num_cpus: int | None = Field(
        None, ge=1, description="Logical CPU slots of the embedded Ray (default: machine cores)."
    )
    metrics_export_port: int | None = Field(None, description="Ray metrics export port.")
    allocator: Literal["jemalloc", "system"] = Field(
        "jemalloc",
        description="malloc of Medserve's Ray workers: jemalloc (Debian's libjemalloc2, "
        "preloaded; the system's where it is not installed) keeps a replica's memory flat "
        "whatever batch sizes form, where glibc's grows with each new one; or the system's.",
    )


class ClusterConfig(Strict):
    http: HTTPConfig = Field(default_factory=HTTPConfig)
    limits: Limits = Field(default_factory=Limits)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Tenants and API keys.")
    audit: AuditConfig = Field(default_factory=AuditConfig, description="Request audit log.")
    ray: RayConfig = Field(default_factory=RayConfig)
    pacs: PacsConfig | None = Field(
        None, description="The PACS analyze jobs read from and store results to; none: no jobs."
    )
    jobs: JobsConfig = Field(default_factory=JobsConfig, description="Study analysis jobs.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where models run: the GPU when present (auto), or forced."
    )
    app_name: str = Field("medserve", description="Serve application name.")
    kubernetes: KubernetesConfig = Field(
        default_factory=KubernetesConfig,
        description="KubeRay overlays: node pools, pod sizes, model store (`medserve build-k8s`).",
    )

    @property
    def proxy_timeout_s(self) -> float:
        """Serve's proxy timeout: a whole request, upload then processing, and a margin so a
        client sees Medserve's own 408 or 504 body rather than the proxy's plain text."""
        return self.limits.upload_timeout_s + self.http.request_timeout_s + 5
