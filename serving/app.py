"""Build the Serve application and its `serve deploy` config from the repository.

`build_app` is the application builder named by the generated config's `import_path`, so
`medserve serve`, `serve deploy` and KubeRay's serveConfigV2 all construct the same graph, and
`deployment_options` is the single place manifest fields become Serve deployment options.
"""

from __future__ import annotations

import asyncio
import platform
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from serving.deployments.gateway import Gateway
from serving.deployments.imaging import ImagingModel
from serving.deployments.llm import LLMModel
from serving.errors import ModelLoadError
from serving.gateway.targets import handle_key
from serving.gateway.traffic import revision, routing
from serving.polling import poll_until
from serving.repository.store import Repository, load_cluster_config, load_repository
from serving.schema.cluster import ClusterConfig
from serving.schema.imaging import ModelManifest
from serving.schema.llm import LLMManifest

IMPORT_PATH = "serving.app:build_app"
GATEWAY = "Gateway"
HEALTH_CHECK_PERIOD_S = 5.0
HEALTH_CHECK_TIMEOUT_S = 30.0
GRACEFUL_SHUTDOWN_S = 20.0
# A rebuild (new version, new weights) starts each replacement before its old replica stops,
# so no model has zero replicas mid-rollout; if the surge finds no free CPU slot the old
# replicas simply keep serving until it does. KubeRay overlays size pods for their own surge.
MAX_SURGE_PERCENT = 100
# jemalloc in every Medserve worker (`ray.allocator`). Measured here on cxr-triage's frozen
# DenseNet, batches of 1 to 8 images in random order: glibc's malloc 560 -> 2140 MiB (each new
# batch size fragments its heap further), jemalloc 560 -> 760 MiB, flat after, and 10% faster.
# Purging is off: freed pages stay for the next batch (as glibc keeps them), so no page is
# faulted in again per request.
JEMALLOC = f"/usr/lib/{platform.machine()}-linux-gnu/libjemalloc.so.2"  # Debian's libjemalloc2
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


class AppArgs(BaseModel):
    """Arguments of the application builder (the `args:` block of the Serve config)."""

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
        description="Digest of the repository and config (serving.gateway.traffic.revision): "
        "Serve's code version, so a change rebuilds the app while a traffic change does not.",
    )


def use_gpu(device: str) -> bool:
    if device == "cuda":
        return True
    if device == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def deployment_name(model: str, version: str) -> str:
    return f"{model}-v{version}"


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


def gateway_options(config: ClusterConfig, repo: Repository) -> dict[str, Any]:
    g = config.gateway
    return {
        "num_replicas": g.num_replicas,
        "max_ongoing_requests": g.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": g.cpus},
        "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_S,
        "max_surge_percent": MAX_SURGE_PERCENT,
        # The traffic split: a change is applied in place by Gateway.reconfigure.
        "user_config": routing(repo).model_dump(),
    }


def worker_env(config: ClusterConfig, target: Literal["local", "k8s"]) -> dict[str, str]:
    """Environment of the application's Ray workers: the allocator. Locally only where the
    library is installed (`make setup` installs it as root); the image always has it."""
    if config.ray.allocator != "jemalloc" or (target == "local" and not Path(JEMALLOC).exists()):
        return {}
    return {"LD_PRELOAD": JEMALLOC, "MALLOC_CONF": JEMALLOC_CONF}


def build_app(args: dict[str, Any]) -> Application:
    """Serve application builder: one imaging deployment per served version, one gateway."""
    a = AppArgs.model_validate(args)
    repo = load_repository(Path(a.model_repo)).with_backends(a.backends)
    config = load_cluster_config(Path(a.config) if a.config else None)
    gpu = use_gpu(a.device or config.device)
    handles = {}
    for manifest, version in repo.iter_versions():
        name = deployment_name(manifest.name, version.version)
        handles[handle_key(manifest.name, version.version)] = ImagingModel.options(  # type: ignore[attr-defined]
            name=name, **deployment_options(manifest, gpu)
        ).bind(str(repo.root), manifest.name, version.version, a.triton_url, manifest.backend)
    for llm in repo.llms.values():  # one deployment per LLM: its served version and adapters
        handles[handle_key(llm.name, llm.served_version)] = LLMModel.options(  # type: ignore[attr-defined]
            name=deployment_name(llm.name, llm.served_version), **deployment_options(llm, gpu)
        ).bind(str(repo.root), llm.name)
    gateway = Gateway.options(name=GATEWAY, **gateway_options(config, repo))  # type: ignore[attr-defined]
    return gateway.bind(str(repo.root), config.model_dump(mode="json"), handles)


def serve_config(
    model_repo: str, config_path: str | None, target: Literal["local", "k8s"] = "local",
    triton_url: str | None = None, backends: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A `serve deploy` / serveConfigV2 document equivalent to `build_app`'s graph."""
    repo = load_repository(Path(model_repo)).with_backends(backends or {})
    config = load_cluster_config(Path(config_path) if config_path else None)
    gpu = target == "k8s" or use_gpu(config.device)
    deployments = [{"name": GATEWAY, **gateway_options(config, repo)}]
    for manifest, version in repo.iter_versions():
        deployments.append(
            {"name": deployment_name(manifest.name, version.version),
             **deployment_options(manifest, gpu)}
        )
    for llm in repo.llms.values():
        deployments.append(
            {"name": deployment_name(llm.name, llm.served_version),
             **deployment_options(llm, gpu)}
        )
    args: dict[str, Any] = {"model_repo": model_repo, "config": config_path}
    if target == "k8s":
        args["device"] = "cuda"
    if triton_url is not None:
        args["triton_url"] = triton_url
    if backends:
        args["backends"] = dict(backends)
    args["revision"] = revision(repo, config_path)
    application: dict[str, Any] = {
        "name": config.app_name,
        "route_prefix": "/",
        "import_path": IMPORT_PATH,
        "args": args,
        "deployments": deployments,
    }
    if env := worker_env(config, target):
        application["runtime_env"] = {"env_vars": env}
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
        "applications": [application],
    }


def run(args: AppArgs, config: ClusterConfig, timeout_s: float = 900.0) -> None:
    """Deploy, or re-deploy after a repository change, onto the started Serve instance.

    Goes through Serve's declarative API, the path of `serve deploy` and KubeRay, because
    only there does Serve compare versions: with the same `revision`, a new traffic split is
    an in-place `reconfigure` of the gateway and no replica restarts (`serve.run` would give
    every deployment a fresh random version and roll them all). Returns once the application
    runs and the gateway routes by the new split.
    """
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ApplicationStatus, ServeDeploySchema

    doc = serve_config(args.model_repo, args.config, "local", triton_url=args.triton_url)
    (application,) = doc["applications"]
    application["name"] = config.app_name
    client = _get_global_client()
    assert client is not None, "serve.start() first"
    client.deploy_apps(ServeDeploySchema.model_validate({"applications": [application]}))
    expected = next(d for d in application["deployments"] if d["name"] == GATEWAY)["user_config"]
    # The gateway is asked through a handle awaited on a loop of our own: with Serve's router
    # on its caller's loop (RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0, part of the throughput-
    # optimized mode) a handle cannot be waited on from synchronous code.
    loop = asyncio.new_event_loop()
    handles: list[DeploymentHandle[Any]] = []  # made on that loop, its router bound to it

    async def routing() -> Any:
        if not handles:
            handles.append(DeploymentHandle(GATEWAY, config.app_name).options(
                method_name="routing"))
        return await asyncio.wait_for(handles[0].remote(), 30)

    def deployed() -> bool:
        app = serve.status().applications.get(config.app_name)
        if app is not None and app.status == ApplicationStatus.DEPLOY_FAILED:
            raise RuntimeError(f"deploying {config.app_name} failed: {app.message}")
        if app is None or app.status != ApplicationStatus.RUNNING:
            return False
        return bool(loop.run_until_complete(routing()) == expected)

    try:
        poll_until(deployed, timeout_s, every_s=0.5)  # Serve's status has no push
    except TimeoutError:
        raise RuntimeError(f"{config.app_name} not running within {timeout_s:g} s") from None
    finally:
        loop.close()


def redeploy(args: AppArgs) -> str:
    """Re-read the repository and cluster config and deploy them onto the running Serve.

    Returns one line for the server's output; a broken repository leaves the running
    application as it was. HTTP options (host, port) are fixed at start-up.
    """
    try:
        repo = load_repository(Path(args.model_repo))
        repo.check()
        cluster = load_cluster_config(Path(args.config) if args.config else None)
        run(args, cluster)
    except (ModelLoadError, RuntimeError) as exc:
        return f"rollout not applied: {getattr(exc, 'message', None) or exc}"
    splits = "; ".join(
        f"{name} " + ",".join(f"{v}={w}" for v, w in m.traffic_split.items())
        for name, m in repo.models.items()
    )
    return f"rollout applied: {splits}"
