"""A real multi-node Ray cluster on one machine, deployed the way KubeRay deploys Medserve.

Each node is its own `ray start --block` process group (a head, and workers that advertise the
KubeRay worker groups' pool resources and CPUs, as the generated RayService's rayStartParams
do); the application goes in through Serve's REST API on the head's dashboard (`PUT
/api/serve/applications/`, what a RayService's serveConfigV2 becomes), not `serve.run`. A
node is lost by SIGKILL to its whole process group: its raylet and every worker on it.

`python -m serving.testing.cluster` runs the same check against a staging cluster's head
(see README "Operations").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from serving.net import free_port
from serving.polling import poll_until

SERVE_API = "/api/serve/applications/"


def auth_headers() -> dict[str, str]:
    """Ray's cluster token (token auth is on by default), for the dashboard's REST API."""
    token = os.environ.get("RAY_AUTH_TOKEN") or _token_file()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _token_file() -> str | None:
    path = Path.home() / ".ray" / "auth_token"
    return path.read_text().strip() if path.is_file() else None


@dataclass
class Node:
    name: str
    proc: subprocess.Popen[bytes]
    resources: dict[str, float]
    cpus: float

    def processes(self) -> list[int]:
        """Pids of every process of this node: `ray start`'s process group (the raylet, its
        agents) and their descendants (each Ray worker leads its own process group)."""
        parent_of: dict[int, int] = {}
        group: set[int] = set()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()  # after the command, which may hold spaces
            parent_of[pid] = int(fields[1])
            if int(fields[2]) == self.proc.pid:
                group.add(pid)
        found = set(group)
        while True:
            more = {pid for pid, parent in parent_of.items() if parent in found} - found
            if not more:
                return sorted(found)
            found |= more

    def kill(self) -> None:
        """SIGKILL to every process of the node at once, as a lost machine would."""
        for pid in self.processes():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@dataclass
class Cluster:
    workdir: Path
    gcs_port: int
    dashboard_port: int
    ray_tmp: Path  # short: Ray's socket paths must fit in 107 bytes
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str], cpus: float,
               resources: dict[str, float]) -> Node:
        log = (self.workdir / f"{name}.log").open("wb")
        cmd = [str(Path(sys.executable).parent / "ray"), "start", "--block",
               f"--num-cpus={cpus:g}", f"--resources={json.dumps(resources)}",
               f"--node-name={name}", *args]
        # Token auth on every node, as `ray start --head` turns it on: workers join with the
        # same token (~/.ray/auth_token, or $RAY_AUTH_TOKEN).
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0",
               "RAY_AUTH_MODE": "token"}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=self.workdir, start_new_session=True)
        node = Node(name, proc, resources, cpus)
        self.nodes[name] = node
        return node

    def start_head(self, cpus: float = 0) -> Node:
        node = self._start("head", [
            "--head", f"--port={self.gcs_port}", "--node-ip-address=127.0.0.1",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--temp-dir={self.ray_tmp}",
        ], cpus, {})
        poll_until(lambda: self._dashboard_up(), 180, every_s=1.0)
        return node

    def start_worker(self, name: str, cpus: float, resources: dict[str, float]) -> Node:
        before = len(self.alive_nodes())
        node = self._start(name, [f"--address={self.address}", "--node-ip-address=127.0.0.1"],
                           cpus, resources)
        def joined() -> bool:
            if node.proc.poll() is not None:
                raise RuntimeError(f"ray node {name} exited; see {self.workdir / name}.log")
            return len(self.alive_nodes()) > before

        poll_until(joined, 120, every_s=1.0)
        return node

    def _dashboard_up(self) -> bool:
        if self.nodes["head"].proc.poll() is not None:
            raise RuntimeError(f"ray head exited; see {self.workdir / 'head.log'}")
        try:
            return httpx.get(self.dashboard + SERVE_API, headers=auth_headers(),
                             timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def alive_nodes(self) -> list[dict[str, Any]]:
        """Ray's state API (through the dashboard): the nodes alive, with their resources."""
        r = httpx.get(self.dashboard + "/api/v0/nodes", params={"detail": "1", "limit": "100"},
                      headers=auth_headers(), timeout=10)
        if r.status_code != 200:
            return []
        return [n for n in r.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def stop(self) -> None:
        for node in reversed(list(self.nodes.values())):
            if node.proc.poll() is None:
                os.killpg(node.proc.pid, signal.SIGTERM)
        for node in self.nodes.values():
            try:
                node.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                node.kill()


@contextmanager
def local_cluster(workdir: Path) -> Iterator[Cluster]:
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(workdir, free_port(), free_port(), Path(tempfile.mkdtemp(prefix="ray-")))
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.ray_tmp, ignore_errors=True)


def deploy(dashboard: str, doc: dict[str, Any]) -> None:
    """PUT the Serve config through the REST API KubeRay's RayService uses."""
    r = httpx.put(dashboard + SERVE_API, json=doc, headers=auth_headers(), timeout=60)
    if r.status_code >= 300:
        raise RuntimeError(f"Serve REST deploy: {r.status_code} {r.text[:500]}")


def details(dashboard: str) -> dict[str, Any]:
    r = httpx.get(dashboard + SERVE_API, headers=auth_headers(), timeout=30)
    r.raise_for_status()
    return r.json()


def wait_running(dashboard: str, apps: Collection[str],
                 timeout_s: float = 600) -> dict[str, Any]:
    """Until every application in `apps` runs; returns their details."""
    def running() -> bool:
        found = details(dashboard).get("applications", {})
        for app in apps:
            a = found.get(app)
            if a and a["status"] == "DEPLOY_FAILED":
                raise RuntimeError(f"{app}: {a.get('message', '')[:500]}")
            if not (a and a["status"] == "RUNNING"):
                return False
        return True

    poll_until(running, timeout_s, every_s=2.0)
    return {app: details(dashboard)["applications"][app] for app in apps}


def deployments(dashboard: str) -> dict[str, dict[str, Any]]:
    """Deployment -> its details, across every application."""
    return {name: d for a in details(dashboard).get("applications", {}).values()
            for name, d in a["deployments"].items()}


def placement(dashboard: str, nodes: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Deployment -> the pool resources of the nodes its RUNNING replicas are on."""
    pools = {n["node_id"]: sorted(k for k in n["resources_total"] if k.startswith("medserve-"))
             for n in nodes}
    out: dict[str, list[str]] = {}
    for name, d in deployments(dashboard).items():
        out[name] = [",".join(pools.get(r["node_id"], ["?"])) for r in d["replicas"]
                     if r["state"] == "RUNNING"]
    return out


def check_placement(dashboard: str, expected: dict[str, str],
                    nodes: list[dict[str, Any]]) -> list[str]:
    """Problems: a deployment with a replica outside the pool its manifest's group asks for."""
    problems = []
    for name, found in placement(dashboard, nodes).items():
        want = expected.get(name)
        wrong = [f for f in found if want not in f.split(",")]
        if not found or wrong:
            problems.append(f"{name}: replicas on {found or 'no node'}, expected {want}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """`python -m serving.testing.cluster DASHBOARD_URL CONFIG.yaml`: CONFIG is a generated
    RayService (its serveConfigV2 is used) or a Serve config; deploy it through the REST API
    (skip with --check-only), wait for RUNNING and check each replica's worker group."""
    import argparse

    import yaml

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("dashboard")
    parser.add_argument("config", type=Path)
    parser.add_argument("--check-only", action="store_true")
    args = parser.parse_args(argv)
    docs = list(yaml.safe_load_all(args.config.read_text()))
    service = next((d for d in docs if d and d.get("kind") == "RayService"), None)
    doc = yaml.safe_load(service["spec"]["serveConfigV2"]) if service else docs[0]
    if not args.check_only:
        deploy(args.dashboard, doc)
    wait_running(args.dashboard, [a["name"] for a in doc["applications"]])
    expected = {d["name"]: next(iter(d["ray_actor_options"].get("resources", {"?": 1})))
                for a in doc["applications"] for d in a["deployments"]}
    r = httpx.get(args.dashboard + "/api/v0/nodes", params={"detail": "1", "limit": "1000"},
                  headers=auth_headers(), timeout=30)
    nodes = [n for n in r.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]
    problems = check_placement(args.dashboard, expected, nodes)
    for line in problems or ["every replica is on the worker group its deployment asks for"]:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
