"""Shared fixtures. Integration tests share one real Medserve per session on a free port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MODEL_REPO = ROOT / "model_repo"
START_TIMEOUT_S = 420
# Small limits so the 413 paths are cheap to exercise.
TEST_LIMITS = {
    "max_instance_bytes": 4 << 20,
    "max_series_bytes": 32 << 20,
    "max_series_instances": 256,
    "max_tensor_bytes": 16 << 20,
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    host_port: str
    pid: int
    log: Path
    config: Path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=90)
    # Ray's helper processes share the session started for the server: end any left over.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("medserve")
    config = tmp / "medserve.yaml"
    config.write_text(
        yaml.safe_dump(
            {"limits": TEST_LIMITS, "ray": {"num_cpus": 8}, "http": {"request_timeout_s": 60}}
        )
    )
    port = free_port()
    log = tmp / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    # A short private temp dir: Ray keeps its session logs there, and its socket paths must
    # stay under the 107-character limit.
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ms-", dir="/tmp")
    cmd = [sys.executable, "-m", "serving.cli", "serve", "--port", str(port),
           "--repo", str(MODEL_REPO), "--config", str(config)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"medserve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"medserve not ready in {START_TIMEOUT_S}s:\n{log.read_text()}")
            time.sleep(0.5)  # polling interval for readiness, not synchronisation
        yield Server(url=url, host_port=f"127.0.0.1:{port}", pid=proc.pid, log=log, config=config)
    finally:
        _stop(proc)
