"""Pod templates of the Ray head and worker groups: delivery of the model repository,
probes, graceful shutdown and a locked-down security context.

Paths here are a contract with the Dockerfile (the image's /app layout) and with
`k8s/base` (Secret, ServiceAccount, NetworkPolicy and PodMonitor selectors); the k8s tests
check both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from serving.http.header_limits import PROXY_CALLBACK, PROXY_CALLBACK_ENV
from serving.schema.cluster import PacsConfig
from serving.schema.kubernetes import KubernetesConfig, Overlay, PodSize, WorkerGroup

APP_LABEL = {"app.kubernetes.io/name": "medserve"}
SERVICE_ACCOUNT = "medserve"
TENANTS_SECRET = "medserve-tenants"
UID = 10001  # above the host's user range, as the Dockerfile's `USER`

IMAGE_MODEL_REPO = "/app/model_repo"  # manifests (with checksums) baked into the image
IMAGE_CONFIG = "/app/medserve.yaml"
MODELS_DIR = "/models"  # the pod's model repository: image manifests + delivered weights
TENANTS_DIR = "/etc/medserve/tenants"

TRITON_REPO_DIR = "/triton-models"  # the Triton sidecar's model repository (ONNX exports)
# Triton's ports, clear of Serve's 8000: reached from inside the pod only (NetworkPolicy
# admits Prometheus to the metrics port alone).
TRITON_HTTP_PORT = 8010
TRITON_GRPC_PORT = 8011
TRITON_METRICS_PORT = 8012

DASHBOARD_PORT = 8265
AGENT_PORT = 52365  # dashboard agent: serves the raylet health check
DEFAULT_METRICS_PORT = 8080
TERMINATION_GRACE_S = 60
# Time for the Service endpoints and the ingress to stop routing to a terminating pod before
# Ray stops; then in-flight requests get up to the rest of the grace period.
PRESTOP_SLEEP_S = 10
RAY_STOP_GRACE_S = 40

# Skips of checkov checks, with the reason each is accepted (annotations on the pod template,
# so a platform team's own checkov run sees the same reasons).
SKIP_IMAGE_DIGEST = (
    "CKV_K8S_43=images are pinned per overlay with kustomize `images:` at release; the "
    "generator cannot know the digest of an image built after it runs"
)
SKIP_PULL_POLICY = (
    "CKV_K8S_15=this overlay runs images loaded into the node (kind load docker-image); "
    "Always would pull them from a registry that does not have them"
)
SKIP_HEAD_TOKEN = (
    "CKV_K8S_38=the KubeRay autoscaler sidecar injected into the head pod scales worker "
    "groups through the Kubernetes API"
)

_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": UID,
    "runAsGroup": UID,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
_POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": UID,
    "runAsGroup": UID,
    "fsGroup": UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def container_security() -> dict[str, Any]:
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in _CONTAINER_SECURITY.items()}


def _resources(cpus: int | str, memory: str, gpus: int = 0) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": str(cpus), "memory": memory}
    if gpus:
        amounts["nvidia.com/gpu"] = str(gpus)
    # Requests equal limits: Guaranteed QoS, and Ray's CPU/GPU counts match what is reserved.
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _volumes(overlay: Overlay, triton: bool) -> list[dict[str, Any]]:
    extra = [{"name": "triton-models", "emptyDir": {"sizeLimit": overlay.models_volume_size}}]
    return [
        *(extra if triton else []),
        {"name": "models", "emptyDir": {"sizeLimit": overlay.models_volume_size}},
        # The root filesystem is read-only: Ray's session directory and HOME live here.
        {"name": "tmp", "emptyDir": {"sizeLimit": "10Gi"}},
        # Ray's object store is shared memory; the container default of 64 MiB is too small.
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        {"name": "tenants",
         "secret": {"secretName": TENANTS_SECRET, "defaultMode": 0o440}},
    ]


PACS_SECRET = "medserve-pacs"  # keys `username` and `password`: the PACS's basic auth


def _pacs_env(pacs: PacsConfig | None) -> list[dict[str, Any]]:
    """The PACS credentials the cluster config names, from the `medserve-pacs` Secret
    (optional: a PACS without auth needs none)."""
    if pacs is None:
        return []
    return [{"name": env, "valueFrom": {"secretKeyRef": {
        "name": PACS_SECRET, "key": key, "optional": True}}}
            for env, key in ((pacs.username_env, "username"), (pacs.password_env, "password"))
            if env]


def _env(overlay: Overlay) -> list[dict[str, str]]:
    return [
        {"name": "HOME", "value": "/tmp"},
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
        # `medserve models` etc. inside a pod see the delivered repository by default.
        {"name": "MEDSERVE_MODEL_REPO", "value": MODELS_DIR},
        {"name": "MEDSERVE_CONFIG", "value": IMAGE_CONFIG},
        {"name": "MEDSERVE_TENANTS_FILE", "value": f"{TENANTS_DIR}/tenants.yaml"},
        # Serve's proxy (on every node) bounds request headers before anything else
        {"name": PROXY_CALLBACK_ENV, "value": PROXY_CALLBACK},
    ]


def init_containers(
    k8s: KubernetesConfig, overlay: Overlay, *, weights: bool, triton_models: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Deliver the model repository into the `models` volume and verify every checksum.

    The image's manifests are copied over whatever the store holds, so the checksums checked
    are the ones this config was generated from; Ray starts only if they all match. Pods that
    host no model replica (the head, a gateway-only group) get the manifests alone: the
    application builder and the gateway read manifests, never weights. Pods with a Triton
    sidecar also get its model repository: the checked weights exported to ONNX (and the
    export checked against torch) by `medserve build-triton`.
    """
    mounts = [{"name": "models", "mountPath": MODELS_DIR}, {"name": "tmp", "mountPath": "/tmp"}]
    stage = f"cp -R {IMAGE_MODEL_REPO}/. {MODELS_DIR}/"
    if weights and overlay.weights == "build":
        stage += f" && medserve build-weights --repo {MODELS_DIR}"
    if weights:
        stage += f" && medserve models check --repo {MODELS_DIR}"
    stage_mounts = list(mounts)
    if triton_models:
        stage_mounts.append({"name": "triton-models", "mountPath": TRITON_REPO_DIR})
        stage += (f" && medserve build-triton --repo {MODELS_DIR} --out {TRITON_REPO_DIR}"
                  " --format onnx" + "".join(f" --model {m}" for m in triton_models))
    # Building demo weights or an ONNX export loads torch; checking only hashes files.
    heavy = triton_models or (weights and overlay.weights == "build")
    steps = []
    if weights and overlay.weights == "object-store":
        steps.append({
            "name": "fetch-weights",
            "image": k8s.model_store.fetch_image,
            "imagePullPolicy": overlay.image_pull_policy,
            # Credentials come from the ServiceAccount (IRSA / workload identity), not a Secret.
            "command": ["aws", "s3", "sync", "--only-show-errors", "--no-progress",
                        f"{k8s.model_store.uri}/", f"{MODELS_DIR}/"],
            "env": [{"name": "HOME", "value": "/tmp"}],
            "resources": _resources(1, "1Gi"),
            "securityContext": container_security(),
            "volumeMounts": mounts,
        })
    steps.append({
        "name": "stage-models",
        "image": k8s.image,
        "imagePullPolicy": overlay.image_pull_policy,
        "command": ["/bin/sh", "-c", stage],
        "env": _env(overlay),
        "resources": _resources(1, "4Gi" if heavy else "1Gi"),
        "securityContext": container_security(),
        "volumeMounts": stage_mounts,
    })
    return steps


def _probe(path: str, port: int, *, period: int, failures: int, delay: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "initialDelaySeconds": delay,
            "periodSeconds": period, "timeoutSeconds": 5, "failureThreshold": failures}


def _pre_stop(script: str) -> dict[str, Any]:
    return {"preStop": {"exec": {"command": ["/bin/sh", "-c", script]}}}


def ray_container(
    k8s: KubernetesConfig, overlay: Overlay, size: PodSize, *, head: bool,
    serve_port: int, metrics_port: int, gpus: int = 0, pacs: PacsConfig | None = None,
) -> dict[str, Any]:
    ports = [{"name": "serve", "containerPort": serve_port},
             {"name": "metrics", "containerPort": metrics_port}]
    if head:
        ports = [{"name": "gcs-server", "containerPort": 6379},
                 {"name": "dashboard", "containerPort": DASHBOARD_PORT},
                 {"name": "client", "containerPort": 10001}, *ports]
    # Liveness follows the raylet; readiness the GCS on the head and, on a worker, the Serve
    # proxy, so only workers that can route requests are behind the serve Service.
    ready = (_probe("/api/gcs_healthz", DASHBOARD_PORT, period=5, failures=6, delay=10) if head
             else _probe("/-/healthz", serve_port, period=5, failures=3, delay=10))
    return {
        "name": "ray-head" if head else "ray-worker",  # KubeRay takes containers[0] as Ray's
        "image": k8s.image,
        "imagePullPolicy": overlay.image_pull_policy,
        "ports": ports,
        "env": [*_env(overlay), *_pacs_env(pacs)],
        "resources": _resources(size.cpus, size.memory, gpus),
        "securityContext": container_security(),
        "livenessProbe": _probe("/api/local_raylet_healthz", AGENT_PORT,
                                period=10, failures=6, delay=30),
        "readinessProbe": ready,
        "lifecycle": _pre_stop(
            f"sleep {PRESTOP_SLEEP_S}; ray stop --grace-period {RAY_STOP_GRACE_S}"
        ),
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tenants", "mountPath": TENANTS_DIR, "readOnly": True},
        ],
    }


def triton_sidecar(overlay: Overlay) -> dict[str, Any]:
    """Triton beside Ray: the pod's triton-backend replicas call it on 127.0.0.1.

    It loads every model of its repository at start (`--model-control-mode=none`) and is
    ready only when all are (`--strict-readiness`), so the pod, and with it Serve's proxy on
    that pod, takes traffic once Triton can answer. At shutdown it waits in `preStop` until
    Ray has drained (the Ray container's preStop sleep plus `ray stop`'s grace period), so
    no in-flight batch loses its server.
    """
    t = overlay.triton
    return {
        "name": "triton",
        "image": t.image,
        "imagePullPolicy": overlay.image_pull_policy,
        "command": ["tritonserver"],
        "args": [
            f"--model-repository={TRITON_REPO_DIR}",
            f"--http-port={TRITON_HTTP_PORT}", f"--grpc-port={TRITON_GRPC_PORT}",
            f"--metrics-port={TRITON_METRICS_PORT}",
            "--model-control-mode=none", "--strict-readiness=true", "--exit-on-error=true",
            f"--exit-timeout-secs={RAY_STOP_GRACE_S}",
        ],
        "ports": [{"name": "triton-http", "containerPort": TRITON_HTTP_PORT},
                  {"name": "triton-grpc", "containerPort": TRITON_GRPC_PORT},
                  {"name": "triton-metrics", "containerPort": TRITON_METRICS_PORT}],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "resources": _resources(t.cpus, t.memory, t.gpus),
        "securityContext": container_security(),
        # Loading (and on first start, optimising) the ONNX models takes a while.
        "startupProbe": _probe("/v2/health/ready", TRITON_HTTP_PORT, period=5, failures=60,
                               delay=5),
        "livenessProbe": _probe("/v2/health/live", TRITON_HTTP_PORT, period=10, failures=6,
                                delay=0),
        "readinessProbe": _probe("/v2/health/ready", TRITON_HTTP_PORT, period=5, failures=3,
                                 delay=0),
        "lifecycle": _pre_stop(f"sleep {PRESTOP_SLEEP_S + RAY_STOP_GRACE_S}"),
        "volumeMounts": [
            {"name": "triton-models", "mountPath": TRITON_REPO_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }


def pod_template(
    k8s: KubernetesConfig, overlay: Overlay, group: WorkerGroup | None, *,
    serve_port: int, metrics_port: int, weights: bool, triton_models: Sequence[str] = (),
    pacs: PacsConfig | None = None,
) -> dict[str, Any]:
    """`triton_models`: the triton-backend models this group hosts; they get a sidecar.
    `pacs`: the cluster's PACS, whose credentials the Ray container gets from a Secret."""
    head = group is None
    size: PodSize = overlay.head if group is None else group
    skips = [SKIP_IMAGE_DIGEST, *([SKIP_HEAD_TOKEN] if head else [])]
    if overlay.image_pull_policy != "Always":
        skips.append(SKIP_PULL_POLICY)
    spec: dict[str, Any] = {
        "serviceAccountName": SERVICE_ACCOUNT,
        "automountServiceAccountToken": head,
        "enableServiceLinks": False,
        "securityContext": dict(_POD_SECURITY),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
        "initContainers": init_containers(k8s, overlay, weights=weights,
                                          triton_models=triton_models),
        "containers": [
            ray_container(k8s, overlay, size, head=head, serve_port=serve_port,
                          metrics_port=metrics_port, gpus=group.gpus if group else 0,
                          pacs=pacs),
            *([triton_sidecar(overlay)] if triton_models else []),
        ],
        "volumes": _volumes(overlay, bool(triton_models)),
    }
    if group is not None and group.node_selector:
        spec["nodeSelector"] = dict(group.node_selector)
    if group is not None and (group.gpus or triton_models):
        # GPU node pools are tainted so that only pods asking for GPUs land there.
        spec["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    component = "ray-head" if head else "ray-worker"
    return {
        "metadata": {
            "labels": {**APP_LABEL, "app.kubernetes.io/component": component},
            "annotations": {f"checkov.io/skip{i}": s for i, s in enumerate(skips, 1)},
        },
        "spec": spec,
    }
