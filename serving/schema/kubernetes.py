"""The `kubernetes:` section of the cluster config: what the KubeRay generator needs to know
about the cluster that no model manifest says (node pools, pod sizes, where weights live).

Like every schema module it imports no Ray: reading a config file starts nothing.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise ValueError("must be lowercase letters, digits and '-', at most 40 characters")
    return value


def _quantity(value: str) -> str:
    if not _QUANTITY.match(value):
        raise ValueError("must be a Kubernetes quantity such as 8Gi")
    return value


class PodSize(_Strict):
    cpus: int = Field(
        2, ge=1, description="CPU request and limit (of a Ray container, also Ray's CPU count)."
    )
    memory: str = Field("8Gi", description="Memory request and limit (Kubernetes quantity).")

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str) -> str:
        return _quantity(v)


class WorkerGroup(PodSize):
    name: str = Field(description="KubeRay worker group name (also its Ray custom resource).")
    deployments: list[str] = Field(
        ["*"], min_length=1,
        description="Serve deployment names (shell patterns) placed on this group; the first "
        "group whose pattern matches a deployment gets it.",
    )
    gpus: int = Field(0, ge=0, le=16, description="nvidia.com/gpu per pod (whole GPUs).")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels of the node pool this group runs on."
    )

    @field_validator("name")
    @classmethod
    def _group_name(cls, v: str) -> str:
        return _dns_label(v)


class IngressSettings(_Strict):
    host: str = Field("medserve.example.org", description="Public host name of the API.")
    tls_secret: str = Field("medserve-tls", description="Secret holding the TLS certificate.")
    class_name: str = Field("nginx", description="IngressClass (annotations are ingress-nginx).")


class TritonSidecar(PodSize):
    """The Triton Inference Server container beside Ray in each worker group that hosts a
    triton-backend model: it serves the ONNX export of those models, built into the pod's
    model volume by the stage-models init container, on the pod's own GPU(s)."""

    image: str = Field(
        "nvcr.io/nvidia/tritonserver:25.10-py3",
        description="Triton image with the ONNX Runtime backend (NGC); pin by digest at release.",
    )
    gpus: int = Field(
        1, ge=1, le=16,
        description="nvidia.com/gpu of the Triton container, on top of the group's `gpus` "
        "(which stay Ray's, for the torch-backend replicas on the same pods).",
    )


class Overlay(_Strict):
    device: Literal["cpu", "cuda"] = Field(description="Where replicas run in this overlay.")
    weights: Literal["build", "object-store"] = Field(
        description="build: demo weights from the manifests' seeds inside the pod (no storage "
        "needed); object-store: copied from `model_store.uri` by an init container.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent"] = Field(
        "Always", description="IfNotPresent for images loaded into the node (kind load)."
    )
    head: PodSize = Field(default_factory=PodSize, description="Ray head pod (runs no replica).")
    worker_groups: list[WorkerGroup] = Field(min_length=1, description="Ray worker groups.")
    idle_timeout_s: int = Field(
        300, ge=0, description="Idle time before the Ray autoscaler removes a worker pod."
    )
    models_volume_size: str = Field(
        "20Gi", description="Size limit of each pod's model repository volume (emptyDir)."
    )
    ingress: IngressSettings = Field(default_factory=IngressSettings)
    backends: dict[str, Literal["torch", "triton"]] = Field(
        default_factory=dict,
        description="Imaging model -> backend in this overlay, overriding its manifest's "
        "`backend`: e.g. Triton (ONNX on GPU) in production, torch on a laptop.",
    )
    triton: TritonSidecar = Field(
        default_factory=TritonSidecar,
        description="Sidecar of the worker groups that host triton-backend models.",
    )

    @field_validator("models_volume_size")
    @classmethod
    def _size(cls, v: str) -> str:
        return _quantity(v)

    @model_validator(mode="after")
    def _unique(self) -> Overlay:
        names = [g.name for g in self.worker_groups]
        if len(set(names)) != len(names):
            raise ValueError("worker group names must be unique")
        if self.device == "cpu" and any(g.gpus for g in self.worker_groups):
            raise ValueError("a cpu overlay has no GPU worker groups")
        return self


class ModelStore(_Strict):
    uri: str = Field(
        "s3://medserve-model-repo-example/model_repo",
        description="Object-store prefix holding the model repository's weights (placeholder).",
    )
    fetch_image: str = Field(
        "amazon/aws-cli:2.22.35", description="Image of the init container that copies them."
    )

    @field_validator("uri")
    @classmethod
    def _s3(cls, v: str) -> str:
        if not v.startswith("s3://"):
            raise ValueError("model_store.uri must be an s3:// URI (aws s3 sync)")
        return v.rstrip("/")


class KubernetesConfig(_Strict):
    name: str = Field(
        "medserve", description="RayService name; KubeRay's Services are <name>-serve-svc etc."
    )
    image: str = Field(
        "medserve", description="Image name in the generated pods; overlays map it to a "
        "registry and tag with kustomize `images:`.",
    )
    model_store: ModelStore = Field(default_factory=ModelStore)
    overlays: dict[str, Overlay] = Field(
        default_factory=dict, description="One kustomize overlay per entry under k8s/overlays/."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _dns_label(v)

    @field_validator("overlays")
    @classmethod
    def _overlay_names(cls, v: dict[str, Overlay]) -> dict[str, Overlay]:
        for name in v:
            _dns_label(name)
        return v
