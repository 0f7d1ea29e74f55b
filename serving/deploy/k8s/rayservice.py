"""The KubeRay RayService of one overlay: serveConfigV2 from `serve_config(..., "k8s")`, worker
groups sized from the manifests, in-tree autoscaling and the zero-downtime upgrade strategy.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import yaml

from serving.deploy.k8s import groups as g
from serving.deploy.k8s import pods
from serving.errors import ModelLoadError
from serving.repository.store import load_repository
from serving.schema.cluster import ClusterConfig
from serving.schema.kubernetes import Overlay
from serving.topology.applications import GATEWAY, deployment_name, serve_config

API_VERSION = "ray.io/v1"


@dataclass(frozen=True)
class TritonPlan:
    """Which models of an overlay Triton serves, and the address their replicas call."""

    backends: dict[str, str]  # the overlay's overrides, passed on to the app builder
    models: dict[str, list[str]]  # triton-backend model -> its deployment names

    @property
    def url(self) -> str | None:
        # The sidecar shares the pod's network namespace: each replica calls its own pod's.
        return f"127.0.0.1:{pods.TRITON_GRPC_PORT}" if self.models else None

    def on(self, deployments: list[str]) -> list[str]:
        """The triton-backend models with a deployment among `deployments`."""
        return sorted(m for m, names in self.models.items() if set(names) & set(deployments))


def triton_plan(repo: Path, overlay: Overlay) -> TritonPlan:
    effective = load_repository(repo).with_backends(overlay.backends)
    models = {
        m.name: [deployment_name(m.name, v.version) for v in m.versions]
        for m in effective.models.values() if m.backend == "triton"
    }
    if models and overlay.device != "cuda":
        raise ModelLoadError(
            f"{', '.join(sorted(models))}: the Triton sidecar serves ONNX on GPU; a cpu overlay "
            "runs imaging models with the torch backend (set `backends` to torch)"
        )
    return TritonPlan(dict(overlay.backends), models)


def serve_doc(
    repo: Path, config_path: Path | None, overlay: Overlay, plan: TritonPlan
) -> tuple[dict[str, Any], dict[str, list[g.Demand]]]:
    """The Serve config as run in the overlay's pods, and its deployments per worker group."""
    doc = copy.deepcopy(serve_config(
        str(repo), str(config_path) if config_path else None, "k8s",
        triton_url=plan.url, backends=plan.backends,
    ))
    for application in doc["applications"]:
        # Paths inside the pod: the image's config and the delivered repository.
        application["args"].update(
            model_repo=pods.MODELS_DIR, config=pods.IMAGE_CONFIG, device=overlay.device
        )
        for d in application["deployments"]:
            actor = d.setdefault("ray_actor_options", {})
            if overlay.device == "cpu":
                actor["num_gpus"] = 0
    placed = g.assign(g.demands(doc), overlay.worker_groups)
    group_of = {d.deployment: name for name, items in placed.items() for d in items}
    for application in doc["applications"]:
        for d in application["deployments"]:
            d["ray_actor_options"]["resources"] = {g.pool_resource(group_of[d["name"]]): 1}
            d["max_surge_percent"] = g.MAX_SURGE_PERCENT
    return doc, placed


def metrics_port(cluster: ClusterConfig) -> int:
    return cluster.ray.metrics_export_port or pods.DEFAULT_METRICS_PORT


def _start_params(cluster: ClusterConfig) -> dict[str, str]:
    # rayStartParams values are strings: KubeRay pastes them into `ray start` flags.
    return {
        "metrics-export-port": str(metrics_port(cluster)),
        "dashboard-agent-listen-port": str(pods.AGENT_PORT),  # the liveness probe's port
    }


def _autoscaler(overlay: Overlay) -> dict[str, Any]:
    security = pods.container_security()
    # KubeRay injects this sidecar with its own mounts; a read-only root would depend on them.
    security["readOnlyRootFilesystem"] = False
    amounts = {"cpu": "500m", "memory": "512Mi"}
    return {
        "upscalingMode": "Default",
        "idleTimeoutSeconds": overlay.idle_timeout_s,
        "imagePullPolicy": overlay.image_pull_policy,
        "resources": {"requests": dict(amounts), "limits": dict(amounts)},
        "securityContext": security,
    }


def rayservice(
    repo: Path, config_path: Path | None, cluster: ClusterConfig, overlay: Overlay
) -> dict[str, Any]:
    k8s = cluster.kubernetes
    plan = triton_plan(repo, overlay)
    doc, placed = serve_doc(repo, config_path, overlay, plan)
    ports: dict[str, Any] = {"serve_port": cluster.http.port, "metrics_port": metrics_port(cluster)}
    workers = []
    for group in overlay.worker_groups:
        items = placed[group.name]
        if not items:
            continue  # a pool no deployment needs (yet) would only cost nodes
        low, high = g.pod_bounds(group, items)
        pool = {g.pool_resource(group.name): g.POOL_UNITS_PER_POD}
        workers.append({
            "groupName": group.name,
            "replicas": low,
            "minReplicas": low,
            "maxReplicas": high,
            "rayStartParams": {
                **_start_params(cluster),
                "resources": _quoted_resources(pool),
            },
            "template": pods.pod_template(
                k8s, overlay, group, **ports,
                weights=any(d.deployment != GATEWAY for d in items),
                triton_models=plan.on([d.deployment for d in items]), pacs=cluster.pacs,
            ),
        })
    return {
        "apiVersion": API_VERSION,
        "kind": "RayService",
        "metadata": {"name": k8s.name, "labels": dict(pods.APP_LABEL)},
        "spec": {
            # Cluster-level changes (image, pods, groups) bring up a new RayCluster and move
            # traffic once its Serve applications are healthy; Serve-only changes roll in place.
            "upgradeStrategy": {"type": "NewCluster"},
            # The head runs no replica (num-cpus 0); requests go to worker proxies only.
            "excludeHeadPodFromServeSvc": True,
            "serveConfigV2": yaml.safe_dump(doc, sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": ray.__version__,
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": _autoscaler(overlay),
                "headGroupSpec": {
                    "rayStartParams": {
                        **_start_params(cluster),
                        "dashboard-host": "0.0.0.0",
                        "num-cpus": "0",
                    },
                    "template": pods.pod_template(k8s, overlay, None, **ports, weights=False,
                                                  pacs=cluster.pacs),
                },
                "workerGroupSpecs": workers,
            },
        },
    }


def _quoted_resources(resources: dict[str, int]) -> str:
    """KubeRay's documented form: a JSON object inside escaped double quotes, because the
    value is pasted into the `ray start --resources=...` shell command."""
    return '"' + json.dumps(resources).replace('"', '\\"') + '"'
