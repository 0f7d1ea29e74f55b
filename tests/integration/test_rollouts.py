"""Rollouts against a real Medserve: a canary split, version pins, and a rollback under load.

One extra server on a copy of the repository with cxr-triage alone, in versions 1 and 2
(tests/canary.py), split 70/30. The rollback is the documented path: `medserve rollout
--weights 1=100 --pid` rewrites the manifest and sends SIGHUP; the server re-deploys, which
for a split-only change is an in-place gateway reconfigure.
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.testing.process import ServerProcess, running_server
from serving.testing.samples import make_png
from tests.canary import MODEL, canary_repo
from tests.conftest import ROOT
from tests.integration.harness import write_config

CANARY_SHARE = 0.3
PNG = {"Content-Type": "image/png"}
APPLIED = "rollout applied"
IMAGE = make_png()


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    tmp = tmp_path_factory.mktemp("rollouts")
    repo = canary_repo(
        tmp / "model_repo",
        traffic={"1": round(100 * (1 - CANARY_SHARE)), "2": round(100 * CANARY_SHARE)},
        # Fixed replica counts and half a CPU slot each: two versions fit a 2-core machine.
        scaling={"min_replicas": 1, "max_replicas": 1, "max_ongoing_requests": 16},
        resources={"cpus": 0.5, "threads": 1},
    )
    config = write_config(tmp / "medserve.yaml", http={"request_timeout_s": 60})
    with running_server("--repo", str(repo), "--config", str(config), log=tmp / "server.log",
                        cwd=ROOT) as srv:
        yield srv, repo


def _predict(client: httpx.Client, server: ServerProcess, version: str | None = None,
             ) -> httpx.Response:
    pinned = f"/versions/{version}" if version else ""
    return client.post(f"{server.url}/v1/imaging/{MODEL}{pinned}/predict",
                       content=IMAGE, headers=PNG, timeout=120)


def _within_binomial(hits: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(hits - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_unpinned_requests_follow_the_canary_split(canary: tuple[ServerProcess, Path]) -> None:
    server, _ = canary
    n = 120
    with httpx.Client() as client:
        versions = [_predict(client, server) for _ in range(n)]
    assert all(r.status_code == 200 for r in versions), [r.text for r in versions[:3]]
    canary_hits = sum(r.json()["version"] == "2" for r in versions)
    assert {r.json()["version"] for r in versions} <= {"1", "2"}
    assert _within_binomial(canary_hits, n, CANARY_SHARE), (canary_hits, n * CANARY_SHARE)


def test_a_pin_always_answers_the_pinned_version(canary: tuple[ServerProcess, Path]) -> None:
    server, _ = canary
    with httpx.Client() as client:
        for version in ("1", "2"):
            answers = [_predict(client, server, version) for _ in range(10)]
            assert [r.status_code for r in answers] == [200] * 10
            assert {r.json()["version"] for r in answers} == {version}
            tensor = np.zeros((1, 1, 224, 224), dtype=np.float32)
            infer = client.post(
                f"{server.url}/v2/models/{MODEL}/versions/{version}/infer", timeout=120,
                json={"inputs": [{"name": "image", "datatype": "FP32", "shape": tensor.shape,
                                  "data": tensor.ravel().tolist()}]},
            )
            assert infer.status_code == 200, infer.text
            assert infer.json()["model_version"] == version
        assert _predict(client, server, "3").status_code == 404


def _model_replica_starts(server: ServerProcess) -> int:
    """Model replicas Serve's controller has started so far (its log, in the server's Ray
    session): a split change must start none."""
    assert server.ray_tmpdir is not None
    logs = server.ray_tmpdir.glob("**/logs/serve/controller_*.log")
    return sum(line.count("Starting Replica(") and f"deployment='{MODEL}-v" in line
               for log in logs for line in log.read_text(errors="replace").splitlines())


def _rollout_applied(log: Path, after: int) -> bool:
    return APPLIED in log.read_text(errors="replace")[after:]


def test_rollback_under_load_fails_no_request(canary: tuple[ServerProcess, Path]) -> None:
    server, repo = canary
    results: list[tuple[float, int, str | None]] = []  # (sent at, status, version)
    stop = threading.Event()

    def client_loop() -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = _predict(client, server)
                    version = r.json().get("version") if r.status_code == 200 else None
                    results.append((sent, r.status_code, version))
                except httpx.HTTPError as exc:
                    results.append((sent, -1, type(exc).__name__))

    clients = [threading.Thread(target=client_loop) for _ in range(4)]
    for t in clients:
        t.start()
    try:
        deadline = time.monotonic() + 120
        while len(results) < 40 and time.monotonic() < deadline:
            time.sleep(0.1)  # poll: enough traffic on the 70/30 split before the rollback
        log_mark = len(server.log.read_text(errors="replace"))
        starts = _model_replica_starts(server)
        assert starts >= 2  # versions 1 and 2
        rollout = subprocess.run(
            [sys.executable, "-m", "serving.cli", "rollout", MODEL, "--weights", "1=100",
             "--repo", str(repo), "--pid", str(server.pid)],
            capture_output=True, text=True, cwd=ROOT, timeout=120,
        )
        assert rollout.returncode == 0, rollout.stderr
        rolled = time.monotonic()
        while not _rollout_applied(server.log, log_mark):
            assert time.monotonic() - rolled < 120, server.log.read_text()[-2000:]
            time.sleep(0.1)  # poll the server's output for the applied re-deploy
        applied = time.monotonic()
        while len([r for r in results if r[0] > applied]) < 40:
            assert time.monotonic() - applied < 120
            time.sleep(0.1)
    finally:
        stop.set()
        for t in clients:
            t.join()
    failed = [r for r in results if r[1] != 200]
    before = [r for r in results if r[0] < rolled]
    after = [r for r in results if r[0] > applied]
    switch_s = applied - rolled
    print(f"\nrollback: {len(results)} requests, {len(failed)} failed, "
          f"applied {switch_s:.2f} s after `medserve rollout`")
    assert failed == []
    assert {r[2] for r in before} == {"1", "2"}  # the canary was live under this load
    assert {r[2] for r in after} == {"1"}
    assert _model_replica_starts(server) == starts
