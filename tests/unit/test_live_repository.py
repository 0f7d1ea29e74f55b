"""Runtime load and unload's order of steps against Serve's declarative API (recorded here,
no Ray): nothing is routed to an application before it runs, nothing is removed while routed,
and every other application goes back to Serve exactly as it was."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.errors import ModelLoadError
from serving.repository.store import load_repository
from serving.schema.cluster import ClusterConfig
from serving.topology import live
from serving.topology.applications import AppArgs, Routing, model_app, routing, serve_config
from tests.canary import MODEL, canary_repo

OTHER = "other-app"  # an application someone else deployed on the same Serve


class FakeServe:
    """The controller's declarative state and the gateway replica's routing."""

    def __init__(self, repo: Path, fail: set[str] | None = None) -> None:
        doc = serve_config(str(repo), None)
        self.apps = {a["name"]: a for a in doc["applications"]}
        self.apps[OTHER] = {"name": OTHER, "import_path": "x:y", "args": {}}
        self.route = routing(load_repository(repo))
        self.fail = fail or set()
        self.log: list[tuple[str, Any]] = []

    def deployed_configs(self) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self.apps)

    def deploy(self, applications: list[dict[str, Any]]) -> None:
        self.apps = {a["name"]: copy.deepcopy(a) for a in applications}
        (gateway,) = self.apps["medserve"]["deployments"]
        self.route = Routing.model_validate(gateway["user_config"])  # reconfigure, in place
        self.log.append(("deploy", sorted(self.apps)))

    def app_statuses(self, names: set[str]) -> dict[str, tuple[str, str]]:
        return {n: ("DEPLOY_FAILED" if n in self.fail else "RUNNING", "boom")
                for n in names if n in self.apps}


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeServe:
    fake = FakeServe(canary_repo(tmp_path / "repo"))
    for name in ("deployed_configs", "deploy", "app_statuses"):
        monkeypatch.setattr(live, name, getattr(fake, name))
    return fake


def _edit_manifest(repo: Path, **changes: Any) -> None:
    manifest = repo / MODEL / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({**yaml.safe_load(manifest.read_text()), **changes}))


def _live(serve: FakeServe, repo: Path) -> live.LiveRepository:
    return live.LiveRepository(AppArgs(model_repo=str(repo)), ClusterConfig(),
                               lambda: serve.route, timeout_s=5)


def test_unload_stops_routing_before_removing_and_load_routes_after_running(
    serve: FakeServe, tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    before = serve.deployed_configs()
    versions = {model_app(MODEL, v) for v in ("1", "2")}
    asyncio.run(_live(serve, repo).unload(load_repository(repo), MODEL))
    (_, routed), (_, removed) = serve.log
    assert versions <= set(routed), "routing stops while the applications still run"
    assert set(removed) == set(before) - versions
    assert MODEL not in serve.route.served and MODEL not in serve.route.traffic
    assert serve.apps[OTHER] == before[OTHER]

    serve.log.clear()
    asyncio.run(_live(serve, repo).load(load_repository(repo), MODEL))
    (_, started), (_, routed) = serve.log
    assert versions <= set(started) == set(routed)
    assert serve.route.served[MODEL] == ["1", "2"]
    assert {k: a for k, a in serve.apps.items() if k != "medserve"} == \
        {k: a for k, a in before.items() if k != "medserve"}, "as it was before the unload"


def test_a_version_dropped_from_the_manifest_serves_until_the_gateway_stops_routing_it(
    serve: FakeServe, tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    versions = load_repository(repo).manifest(MODEL).model_dump(mode="json")["versions"]
    _edit_manifest(repo, versions=versions[1:], default_version="2")  # only "2" left
    asyncio.run(_live(serve, repo).load(load_repository(repo), MODEL))
    (_, started), (_, routed), (_, removed) = serve.log
    assert model_app(MODEL, "1") in started and model_app(MODEL, "1") in routed
    assert model_app(MODEL, "1") not in removed
    assert serve.route.served[MODEL] == ["2"] and serve.route.traffic[MODEL] == {"2": 100}


def test_a_failed_start_puts_everything_back_and_names_it(
    serve: FakeServe, tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    versions = load_repository(repo).manifest(MODEL).model_dump(mode="json")["versions"]
    _edit_manifest(repo, versions=[*versions, {**versions[-1], "version": "3"}])
    (repo / MODEL / "3").symlink_to(repo / MODEL / "2")
    serve.fail = {model_app(MODEL, "3")}
    before, route = serve.deployed_configs(), serve.route
    with pytest.raises(ModelLoadError, match=f"{model_app(MODEL, '3')} failed to start"):
        asyncio.run(_live(serve, repo).load(load_repository(repo), MODEL))
    assert serve.apps == before and serve.route == route
