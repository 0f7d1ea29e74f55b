"""The Serve applications Medserve runs, as `serve deploy` / serveConfigV2 documents.

One application per served model version (an LLM: its served version) and one for the gateway,
the only one with an HTTP route. Serve gives every deployment of an application the code
version of that application's config (import path, runtime_env, args), so separate
applications are what lets a model version be loaded, unloaded or rebuilt while every other
replica keeps running (serving.topology.live). Each model application's `revision` digests
what its replicas are built from, so a manifest change restarts only the versions it touches.

The gateway reaches the model applications by name (`model_app`) and learns which ones it
routes to from its Serve `user_config` (`Routing`): the served set, the canary splits and a
digest of the manifests. Changing it is an in-place `reconfigure`, no replica restarted.
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serving.repository.store import Repository, load_cluster_config, load_repository
from serving.schema.cluster import ClusterConfig
from serving.schema.imaging import ModelManifest
from serving.schema.llm import LLMManifest

GATEWAY_IMPORT_PATH = "serving.app:build_app"
MODEL_IMPORT_PATH = "serving.app:build_model"
GATEWAY = "Gateway"
HEALTH_CHECK_PERIOD_S = 5.0
HEALTH_CHECK_TIMEOUT_S = 30.0
GRACEFUL_SHUTDOWN_S = 20.0
# A rebuild (new weights) starts each replacement before its old replica stops, so no model
# has zero replicas mid-rollout; if the surge finds no free CPU slot the old replicas simply
# keep serving until it does. KubeRay overlays size pods for their own surge.
MAX_SURGE_PERCENT = 100
# jemalloc in every Medserve worker (`ray.allocator`). Measured here on cxr-triage's frozen
# DenseNet, batches of 1 to 8 images in random order: glibc's malloc 560 -> 2140 MiB (each new
# batch size fragments its heap further), jemalloc 560 -> 760 MiB, flat after, and 10% faster.
# Purging is off: freed pages stay for the next batch (as glibc keeps them), so no page is
# faulted in again per request.
JEMALLOC = f"/usr/lib/{platform.machine()}-linux-gnu/libjemalloc.so.2"  # Debian's libjemalloc2
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


class AppArgs(BaseModel):
    """Arguments of the gateway application's builder (its `args:` block), and what every
    model application's args are derived from."""

    model_config = ConfigDict(extra="forbid")
    model_repo: str = Field("model_repo", description="Path of the model repository.")
    config: str | None = Field(None, description="Cluster config file; None for defaults.")
    device: Literal["auto", "cpu", "cuda"] | None = Field(
        None, description="Overrides the cluster config's device."
    )
    triton_url: str | None = Field(
        None, description="Triton gRPC host:port for the models whose backend is triton."
    )
    backends: dict[str, Literal["torch", "triton"]] = Field(
        default_factory=dict,
        description="Imaging model -> backend, overriding its manifest's (a KubeRay overlay's "
        "`backends`: Triton on GPU nodes, the torch backend elsewhere).",
    )
    revision: str | None = Field(
        None,
        description="Digest of what the application's replicas are built from: Serve's code "
        "version, so a change there rebuilds this application and no other.",
    )


class ModelAppArgs(AppArgs):
    """Arguments of one model application's builder: one version of one model."""

    model: str = Field(description="Model name (its folder in the repository).")
    version: str = Field(description="The version this application serves.")


class Routing(BaseModel):
    """The gateway's `user_config`: what it routes to, changed in place at run time."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    served: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Model -> the versions with a running application (an LLM: its served "
        "version). A model of the repository that is not here is unloaded.",
    )
    traffic: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="model -> version -> weight (positive weights only)."
    )
    manifests: str = Field(
        "", description="Digest of the repository's manifests: a change makes the gateway "
        "read them again (a version imported, a manifest edited)."
    )

    @field_validator("traffic")
    @classmethod
    def _positive(cls, v: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        for model, split in v.items():
            if not split or any(w <= 0 for w in split.values()):
                raise ValueError(f"traffic of {model!r} needs positive weights")
        return v


def use_gpu(device: str) -> bool:
    if device == "cuda":
        return True
    if device == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def deployment_name(model: str, version: str) -> str:
    return f"{model}-v{version}"


def model_app(model: str, version: str) -> str:
    """The Serve application of one model version: named as its single deployment."""
    return deployment_name(model, version)


def served_versions(manifest: ModelManifest | LLMManifest) -> list[str]:
    """The versions of a model that get an application: every imaging version (pinned
    requests and canaries reach any), an LLM's served version."""
    if isinstance(manifest, LLMManifest):
        return [manifest.served_version]
    return [v.version for v in manifest.versions]


def _manifests_digest(repo: Repository) -> str:
    return _digest(m.model_dump(mode="json", exclude={"traffic"})
                   for m in repo.all_manifests.values())


def routing(repo: Repository) -> Routing:
    """The gateway's user_config with every model of the repository served."""
    return Routing(
        served={n: served_versions(m) for n, m in repo.all_manifests.items()},
        traffic={n: m.traffic_split for n, m in repo.models.items()},
        manifests=_manifests_digest(repo),
    )


def with_model(route: Routing, repo: Repository, name: str, loaded: bool) -> Routing:
    """`route` with one model loaded as the repository has it now, or unloaded; every other
    model routed as before (a manifest changed on disk since is not applied until loaded)."""
    served, traffic = dict(route.served), dict(route.traffic)
    served.pop(name, None)
    traffic.pop(name, None)
    if loaded:
        manifest = repo.all_manifests[name]
        served[name] = served_versions(manifest)
        if isinstance(manifest, ModelManifest):
            traffic[name] = manifest.traffic_split
    return Routing(served=served, traffic=traffic, manifests=_manifests_digest(repo))


def _digest(docs: Any) -> str:
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(json.dumps(doc, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def model_revision(manifest: ModelManifest | LLMManifest, version: str) -> str:
    """What one version's replicas are built from: the manifest but its traffic split, its
    other versions and, for an LLM, its adapters (loaded by the running replicas)."""
    exclude = {"traffic", "versions", "default_version", "adapters"}
    doc = manifest.model_dump(mode="json", exclude=exclude)
    return _digest([doc, manifest.version(version).model_dump(mode="json")])


def config_revision(config_path: str | None) -> str:
    """The gateway's code version: the cluster config file it reads."""
    if config_path is None or not Path(config_path).is_file():
        return _digest([])
    return hashlib.sha256(Path(config_path).read_bytes()).hexdigest()[:16]


def deployment_options(manifest: ModelManifest | LLMManifest, gpu: bool) -> dict[str, Any]:
    s, r = manifest.scaling, manifest.resources
    # A triton-backend replica only forwards batches: the GPU belongs to Triton.
    if isinstance(manifest, ModelManifest) and manifest.backend == "triton":
        gpu = False
    opts: dict[str, Any] = {
        "max_ongoing_requests": s.max_ongoing_requests,
        "max_queued_requests": s.max_queued_requests,
        "ray_actor_options": {"num_cpus": r.cpus, "num_gpus": r.gpus if gpu else 0},
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
        "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_S,
        "max_surge_percent": MAX_SURGE_PERCENT,
    }
    if s.min_replicas == s.max_replicas:
        opts["num_replicas"] = s.min_replicas
    else:
        opts["autoscaling_config"] = {
            "min_replicas": s.min_replicas,
            "max_replicas": s.max_replicas,
            "initial_replicas": s.initial_replicas,
            "target_ongoing_requests": s.target_ongoing_requests,
            "upscale_delay_s": s.upscale_delay_s,
            "downscale_delay_s": s.downscale_delay_s,
            "look_back_period_s": s.look_back_period_s,
        }
    return opts


def gateway_options(config: ClusterConfig, route: Routing) -> dict[str, Any]:
    g = config.gateway
    return {
        "num_replicas": g.num_replicas,
        "max_ongoing_requests": g.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": g.cpus},
        "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_S,
        "max_surge_percent": MAX_SURGE_PERCENT,
        # What it routes to: a change is applied in place by Router.reconfigure.
        "user_config": route.model_dump(),
    }


def worker_env(config: ClusterConfig, target: Literal["local", "k8s"]) -> dict[str, str]:
    """Environment of the application's Ray workers: the allocator. Locally only where the
    library is installed (`make setup` installs it as root); the image always has it."""
    if config.ray.allocator != "jemalloc" or (target == "local" and not Path(JEMALLOC).exists()):
        return {}
    return {"LD_PRELOAD": JEMALLOC, "MALLOC_CONF": JEMALLOC_CONF}


def model_applications(
    repo: Repository, name: str, args: AppArgs, gpu: bool,
    runtime_env: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The applications of one model: one per version it serves (`served_versions`). Their
    args name this model only, so a change to another model's leaves them as they are."""
    manifest = repo.all_manifests[name]
    base: dict[str, Any] = {"model_repo": args.model_repo}
    if args.device is not None:
        base["device"] = args.device
    if args.triton_url is not None:
        base["triton_url"] = args.triton_url
    if name in args.backends:
        base["backends"] = {name: args.backends[name]}
    out = []
    for version in served_versions(manifest):
        app: dict[str, Any] = {
            "name": model_app(name, version),
            "route_prefix": None,  # reached through the gateway only
            "import_path": MODEL_IMPORT_PATH,
            "args": {**base, "model": name, "version": version,
                     "revision": model_revision(manifest, version)},
            "deployments": [{"name": deployment_name(name, version),
                             **deployment_options(manifest, gpu)}],
        }
        if runtime_env:
            app["runtime_env"] = copy.deepcopy(dict(runtime_env))
        out.append(app)
    return out


def gateway_application(
    config: ClusterConfig, args: AppArgs, route: Routing,
    runtime_env: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    app: dict[str, Any] = {
        "name": config.app_name,
        "route_prefix": "/",
        "import_path": GATEWAY_IMPORT_PATH,
        "args": {**args.model_dump(exclude={"revision"}, exclude_none=True),
                 "revision": config_revision(args.config)},
        "deployments": [{"name": GATEWAY, **gateway_options(config, route)}],
    }
    if not args.backends:
        del app["args"]["backends"]
    if runtime_env:
        app["runtime_env"] = copy.deepcopy(dict(runtime_env))
    return app


def serve_config(
    model_repo: str, config_path: str | None, target: Literal["local", "k8s"] = "local",
    triton_url: str | None = None, backends: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A `serve deploy` / serveConfigV2 document: the gateway and every model of the
    repository (`medserve serve`, `serve deploy` and KubeRay start from this)."""
    repo = load_repository(Path(model_repo)).with_backends(backends or {})
    config = load_cluster_config(Path(config_path) if config_path else None)
    args = AppArgs(
        model_repo=model_repo, config=config_path, triton_url=triton_url,
        backends=dict(backends or {}),
        device="cuda" if target == "k8s" else None,
    )
    env = worker_env(config, target)
    runtime_env = {"env_vars": env} if env else None
    gpu = target == "k8s" or use_gpu(config.device)
    applications = [gateway_application(config, args, routing(repo), runtime_env)]
    for name in repo.all_manifests:
        applications += model_applications(repo, name, args, gpu, runtime_env)
    http = config.http
    return {
        "proxy_location": "EveryNode",
        "http_options": {
            "host": "0.0.0.0" if target == "k8s" else http.host,
            "port": http.port,
            # Serve's own timeout sits above ours so clients see Medserve's 408/504 bodies.
            "request_timeout_s": config.proxy_timeout_s,
            "keep_alive_timeout_s": http.keep_alive_timeout_s,
        },
        "logging_config": {"encoding": "JSON", "log_level": "INFO", "enable_access_log": True},
        "applications": applications,
    }
