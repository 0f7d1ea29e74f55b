"""Shared fixtures. Integration tests share one real Medserve per session on a free port."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from serving.testing.orthanc import OrthancProcess, orthanc_binary, running_orthanc
from serving.testing.process import ServerProcess, running_server

ROOT = Path(__file__).resolve().parent.parent
MODEL_REPO = ROOT / "model_repo"
# Small limits so the 413 paths are cheap to exercise.
TEST_LIMITS = {
    "max_instance_bytes": 4 << 20,
    "max_series_bytes": 32 << 20,
    "max_series_instances": 256,
    "max_tensor_bytes": 16 << 20,
    "max_chat_bytes": 256 << 10,
}

Server = ServerProcess


def linked_repo(dest: Path) -> Path:
    """The model repository at `dest` for a test that changes it: weights hard-linked (no
    copy of hundreds of MB), manifests and every small file copied, so nothing the test
    writes reaches the real one."""

    def link_or_copy(src: str, dst: str) -> None:
        if Path(src).stat().st_size > 1 << 20:
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)

    shutil.copytree(MODEL_REPO, dest, copy_function=link_or_copy)
    return dest


TIERS = ("unit", "integration", "k8s")  # one folder each under tests/


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test gets its folder's tier marker (`pytest -m unit`: no Ray, no outside binary,
    under a minute); a test that needs Prometheus' binaries is `promtool` instead of `unit`."""
    for item in items:
        tier = next((t for t in TIERS if t in item.path.parts), None)
        if tier == "unit" and item.get_closest_marker("promtool") is not None:
            continue
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))


# Study jobs in the shared server: short leases and back-off, so a lost replica's job and a
# PACS outage play out in seconds.
TEST_JOBS = {"lease_s": 4, "poll_s": 0.25, "max_attempts": 3}
PACS_ENV = {"MEDSERVE_PACS_USER": "", "MEDSERVE_PACS_PASSWORD": ""}


@pytest.fixture(scope="session")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancProcess | None]:
    """A real Orthanc for the shared server's `pacs:`; None where it is not installed (the
    tests that need it skip, or fail in CI: tests/orthanc.py)."""
    if orthanc_binary() is None:
        yield None
        return
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as orthanc:
        yield orthanc


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, pacs: OrthancProcess | None
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("medserve")
    config = tmp / "medserve.yaml"
    doc: dict = {"limits": TEST_LIMITS, "ray": {"num_cpus": 8}, "http": {"request_timeout_s": 60},
                 "jobs": {**TEST_JOBS, "store_path": str(tmp / "jobs.sqlite")}}
    env = {"RAY_metrics_report_interval_ms": "1000"}
    if pacs is not None:
        doc["pacs"] = {"url": pacs.dicomweb_url, "username_env": "MEDSERVE_PACS_USER",
                       "password_env": "MEDSERVE_PACS_PASSWORD", "attempts": 2,
                       "backoff_s": 0.2, "timeout_s": 10}
        env |= dict(zip(PACS_ENV, pacs.auth, strict=True))
    config.write_text(yaml.safe_dump(doc))
    with running_server(
        "--repo", str(MODEL_REPO), "--config", str(config), log=tmp / "server.log", cwd=ROOT,
        # A fixed metrics port for Prometheus; Ray reports every second instead of every 10.
        metrics=True, env=env,
    ) as srv:
        yield srv
