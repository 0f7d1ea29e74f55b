"""Load and unload models on the running Serve instance: Triton's repository extension
(`POST /v2/repository/models/{m}/load|unload`) behind the gateway.

Goes through Serve's declarative API with the whole list of applications as the controller
holds it now, changed for one model only: every other application goes back with the same
config, so Serve leaves its replicas alone. Two steps, so no request is routed to an
application that is not running: a load starts the model's applications and waits until they
run before the gateway routes to them; an unload first stops the routing, then removes them.
A model whose applications fail to start is removed again and the error names it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from serving.errors import ModelLoadError
from serving.repository.store import Repository
from serving.schema.cluster import ClusterConfig
from serving.topology.applications import (
    GATEWAY,
    AppArgs,
    Routing,
    model_app,
    model_applications,
    use_gpu,
    with_model,
)

log = logging.getLogger("ray.serve")
POLL_S = 0.5


def _client() -> Any:
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:
        raise RuntimeError("no Serve instance to deploy to")
    return client


def deployed_configs() -> dict[str, dict[str, Any]]:
    """Application -> its config, for every application deployed through the declarative API
    (the ones Serve would delete when a new list leaves them out)."""
    details = _client().get_serve_details()
    return {name: app["deployed_app_config"]
            for name, app in details.get("applications", {}).items()
            if app.get("deployed_app_config")}


def deploy(applications: list[dict[str, Any]]) -> None:
    from ray.serve.schema import ServeDeploySchema

    _client().deploy_apps(ServeDeploySchema.model_validate({"applications": applications}))


def app_statuses(names: set[str]) -> dict[str, tuple[str, str]]:
    from ray import serve

    apps = serve.status().applications
    return {n: (str(apps[n].status), apps[n].message or "") for n in names if n in apps}


async def wait_running(names: set[str], timeout_s: float) -> None:
    """Until every application in `names` runs; raises ModelLoadError on a failed one."""
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = await asyncio.to_thread(app_statuses, names)
        failed = {n: m for n, (s, m) in statuses.items() if s.endswith("DEPLOY_FAILED")}
        if failed:
            name, message = next(iter(failed.items()))
            raise ModelLoadError(f"{name} failed to start: {message.strip().splitlines()[-1:]}")
        if len(statuses) == len(names) and all(s.endswith("RUNNING")
                                               for s, _ in statuses.values()):
            return
        if time.monotonic() > deadline:
            raise ModelLoadError(f"{', '.join(sorted(names))} not running in {timeout_s:g} s")
        await asyncio.sleep(POLL_S)


class LiveRepository:
    """The gateway's side of runtime load and unload: one change at a time per replica."""

    def __init__(self, args: AppArgs, config: ClusterConfig,
                 routed: Callable[[], Routing], timeout_s: float = 600.0) -> None:
        self.args, self.config, self.routed, self.timeout_s = args, config, routed, timeout_s
        self.gpu = use_gpu(args.device or config.device)
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def _route(self, configs: dict[str, dict[str, Any]], route: Routing) -> None:
        """Deploy the gateway's new user_config; return once this replica routes by it (the
        others reconfigure at the same time; Serve applies it to each in place)."""
        for d in configs[self.config.app_name]["deployments"]:
            if d["name"] == GATEWAY:
                d["user_config"] = route.model_dump()
        await asyncio.to_thread(deploy, list(configs.values()))
        deadline = time.monotonic() + self.timeout_s
        while self.routed() != route:
            if time.monotonic() > deadline:
                raise ModelLoadError("the gateway did not take the new routing in time")
            await asyncio.sleep(POLL_S / 5)

    async def load(self, repo: Repository, name: str) -> None:
        """Deploy `name` as the repository has it now (checked by the caller), or redeploy it:
        unchanged versions keep their replicas, changed ones roll, removed ones stop."""
        await self._shielded(self._load(repo, name))

    async def unload(self, repo: Repository, name: str) -> None:
        """Stop routing to `name`, then remove its applications (their replicas finish what
        they were sent within the graceful shutdown)."""
        await self._shielded(self._unload(repo, name))

    async def _shielded(self, change: Coroutine[Any, Any, None]) -> None:
        # A client that hangs up (or a proxy timeout) must not leave a change half done.
        task = asyncio.create_task(change)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.shield(task)

    async def _load(self, repo: Repository, name: str) -> None:
        async with self._lock:
            configs = await asyncio.to_thread(deployed_configs)
            old = {model_app(name, v) for v in self.routed().served.get(name, [])}
            new = {a["name"]: a for a in model_applications(
                repo, name, self.args, self.gpu,
                configs[self.config.app_name].get("runtime_env"))}
            step = configs | new  # a version the manifest dropped keeps serving until routed
            await asyncio.to_thread(deploy, list(step.values()))
            try:
                await wait_running(set(new), self.timeout_s)
            except ModelLoadError:
                await asyncio.to_thread(deploy, list(configs.values()))  # as it was
                raise
            await self._route(step, with_model(self.routed(), repo, name, loaded=True))
            if dropped := old - set(new):  # `step` now holds the gateway's new routing
                await asyncio.to_thread(deploy, [c for k, c in step.items() if k not in dropped])
            log.info("model %s loaded: applications %s", name, sorted(new))

    async def _unload(self, repo: Repository, name: str) -> None:
        async with self._lock:
            configs = await asyncio.to_thread(deployed_configs)
            gone = {model_app(name, v) for v in self.routed().served.get(name, [])}
            await self._route(configs, with_model(self.routed(), repo, name, loaded=False))
            # `configs` now holds the gateway's new routing: only the model's apps go.
            await asyncio.to_thread(deploy, [c for k, c in configs.items() if k not in gone])
            log.info("model %s unloaded: applications %s removed", name, sorted(gone))
