"""Shared fixtures. Integration tests share one real Medserve per session on a free port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

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


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("medserve")
    config = tmp / "medserve.yaml"
    config.write_text(
        yaml.safe_dump(
            {"limits": TEST_LIMITS, "ray": {"num_cpus": 8}, "http": {"request_timeout_s": 60}}
        )
    )
    with running_server(
        "--repo", str(MODEL_REPO), "--config", str(config), log=tmp / "server.log", cwd=ROOT,
        # A fixed metrics port for Prometheus; Ray reports every second instead of every 10.
        metrics=True, env={"RAY_metrics_report_interval_ms": "1000"},
    ) as srv:
        yield srv
