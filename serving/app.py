"""The Serve application builders and the deploy onto a running Serve instance.

`build_app` (the gateway) and `build_model` (one model version) are the builders the
generated config's `import_path`s name (serving.topology.applications), so `medserve serve`,
`serve deploy` and KubeRay's serveConfigV2 all construct the same applications.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from serving.deployments.gateway import Gateway
from serving.deployments.imaging import ImagingModel
from serving.deployments.llm import LLMModel
from serving.errors import ModelLoadError
from serving.polling import poll_until
from serving.repository.store import load_cluster_config, load_repository
from serving.schema.cluster import ClusterConfig
from serving.topology.applications import (
    GATEWAY,
    AppArgs,
    ModelAppArgs,
    deployment_name,
    deployment_options,
    serve_config,
    use_gpu,
)


def build_app(args: dict[str, Any]) -> Application:
    """The gateway application's builder: the HTTP ingress; what it routes to comes in its
    user_config (serving.topology.applications.Routing)."""
    a = AppArgs.model_validate(args)
    config = load_cluster_config(Path(a.config) if a.config else None)
    return Gateway.bind(a.model_dump(mode="json"), config.model_dump(mode="json"))  # type: ignore[attr-defined]


def build_model(args: dict[str, Any]) -> Application:
    """One model version's application: its imaging or LLM deployment."""
    a = ModelAppArgs.model_validate(args)
    repo = load_repository(Path(a.model_repo)).with_backends(a.backends)
    config = load_cluster_config(Path(a.config) if a.config else None)
    gpu = use_gpu(a.device or config.device)
    name = deployment_name(a.model, a.version)
    if a.model in repo.llms:
        llm = repo.llms[a.model]
        return LLMModel.options(name=name, **deployment_options(llm, gpu)).bind(  # type: ignore[attr-defined]
            str(repo.root), a.model)
    manifest = repo.manifest(a.model)
    return ImagingModel.options(name=name, **deployment_options(manifest, gpu)).bind(  # type: ignore[attr-defined]
        str(repo.root), a.model, a.version, a.triton_url, manifest.backend)


def run(args: AppArgs, config: ClusterConfig, timeout_s: float = 900.0) -> None:
    """Deploy, or re-deploy after a repository change, onto the started Serve instance: the
    gateway and every model of the repository (a model unloaded at run time comes back, as
    after a restart).

    Goes through Serve's declarative API, the path of `serve deploy` and KubeRay, because
    only there does Serve compare versions: an application whose config is unchanged keeps
    its replicas, and a new traffic split is an in-place `reconfigure` of the gateway
    (`serve.run` would give every deployment a fresh random version and roll them all).
    Returns once every application runs and the gateway routes by the new split.
    """
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ApplicationStatus, ServeDeploySchema

    doc = serve_config(args.model_repo, args.config, "local", triton_url=args.triton_url)
    applications = doc["applications"]
    client = _get_global_client()
    assert client is not None, "serve.start() first"
    client.deploy_apps(ServeDeploySchema.model_validate({"applications": applications}))
    gateway = next(a for a in applications if a["name"] == config.app_name)
    expected = next(d for d in gateway["deployments"] if d["name"] == GATEWAY)["user_config"]
    names = {a["name"] for a in applications}
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
        apps = serve.status().applications
        for name in names:
            app = apps.get(name)
            if app is not None and app.status == ApplicationStatus.DEPLOY_FAILED:
                raise RuntimeError(f"deploying {name} failed: {app.message}")
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
