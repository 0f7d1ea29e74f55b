"""Autoscaling against a real Medserve: a load step scales cxr-triage from 1 replica to 2,
and back to 1 after the load stops, with no failed request in either phase.

One extra server on a copy of the repository with cxr-triage alone. Its manifest's scaling
block carries demo values (seconds, not Ray's 30 s / 600 s defaults) and the Serve metric
push intervals are shortened through the environment, so the step fits a 2-core machine in
about two minutes. The replica count is read where an SRE reads it: Medserve's
`medserve_replica_ready` gauge (one series per live replica) on Ray's metrics export port.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadtests.run.local import edited_repository
from serving.observability.metrics import EXPORTED_PREFIX, REPLICA_READY
from serving.testing.process import ServerProcess, running_server
from serving.testing.samples import make_png
from tests.canary import MODEL
from tests.conftest import MODEL_REPO, ROOT
from tests.integration.harness import write_config

CLIENTS = 12  # closed-loop: 12 in flight against target_ongoing_requests 2 per replica
SCALING = {
    "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
    "max_ongoing_requests": 16, "upscale_delay_s": 1, "downscale_delay_s": 5,
    "look_back_period_s": 11,
}
PUSH_S = "0.5"  # how often handles and replicas report in-flight requests to the autoscaler
IMAGE = make_png()


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("autoscaling")
    repo = edited_repository(MODEL_REPO, tmp / "model_repo", {
        MODEL: {"scaling": SCALING, "resources": {"cpus": 0.5, "threads": 1}}})
    config = write_config(tmp / "medserve.yaml", http={"request_timeout_s": 60})
    env = {
        "RAY_metrics_report_interval_ms": "500",
        "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": PUSH_S,
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": PUSH_S,
    }
    with running_server("--repo", str(repo), "--config", str(config), log=tmp / "server.log",
                        cwd=ROOT, metrics=True, env=env) as srv:
        yield srv


def ready_replicas(server: ServerProcess) -> int:
    """Replicas of cxr-triage whose readiness gauge says 1 (a stopped replica's series ages
    out of Ray's agent within two report intervals)."""
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
    name = EXPORTED_PREFIX + REPLICA_READY
    return sum(
        1 for family in text_string_to_metric_families(text) if family.name == name
        for sample in family.samples
        if sample.labels.get("model") == MODEL and sample.value == 1.0
    )


def wait_for(check: str, server: ServerProcess, replicas: int, timeout_s: float) -> float:
    start = time.monotonic()
    while ready_replicas(server) != replicas:
        assert time.monotonic() - start < timeout_s, f"{check}: no {replicas} replicas"
        time.sleep(0.25)  # poll the metrics endpoint
    return time.monotonic() - start


class Clients:
    """`n` closed-loop clients posting a radiograph, each status code appended to `statuses`."""

    def __init__(self, server: ServerProcess, n: int, statuses: list[int]) -> None:
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(server, statuses))
                        for _ in range(n)]
        for t in self.threads:
            t.start()

    def _loop(self, server: ServerProcess, statuses: list[int]) -> None:
        with httpx.Client() as client:
            while not self.done.is_set():
                try:
                    r = client.post(f"{server.url}/v1/imaging/{MODEL}/predict", content=IMAGE,
                                    headers={"Content-Type": "image/png"}, timeout=120)
                    statuses.append(r.status_code)
                except httpx.HTTPError:
                    statuses.append(-1)

    def stop(self) -> None:
        self.done.set()
        for t in self.threads:
            t.join()


def test_load_step_scales_up_and_back_down_without_failures(scaled: ServerProcess) -> None:
    wait_for("before load", scaled, 1, 60)
    under_load: list[int] = []
    heavy = Clients(scaled, CLIENTS, under_load)
    try:
        scale_up_s = wait_for("under load", scaled, 2, 180)
        served_at_scale_up = len(under_load)
        deadline = time.monotonic() + 60
        while len(under_load) < served_at_scale_up + 50:  # the second replica takes traffic
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        heavy.stop()
    # One client below target keeps traffic flowing while Serve drains the extra replica.
    draining: list[int] = []
    light = Clients(scaled, 1, draining)
    try:
        scale_down_s = wait_for("after load", scaled, 1, 180)
    finally:
        light.stop()
    print(f"\nautoscaling: {len(under_load)} requests under load, "
          f"{sum(s != 200 for s in under_load)} failed; {len(draining)} while scaling down, "
          f"{sum(s != 200 for s in draining)} failed; scale-up 1->2 in {scale_up_s:.1f} s "
          f"(to a ready replica), scale-down 2->1 in {scale_down_s:.1f} s after the step ended")
    assert [s for s in under_load if s != 200] == []
    assert draining and [s for s in draining if s != 200] == []
