"""Helpers for the overload and fault tests: a config file, binary OIP bodies, the server's
replica processes, and its model metrics. (A trimmed repository with edited manifests is
`loadtests.run.local.edited_repository`.)"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serving.observability.metrics import REPLICA_READY, exported
from tests.conftest import Server


def write_config(path: Path, **sections: Any) -> Path:
    path.write_text(yaml.safe_dump({"ray": {"num_cpus": 8}, **sections}))
    return path


def binary_infer(name: str, array: Any) -> tuple[bytes, dict[str, str]]:
    """An OIP infer body with one FP32 input in the binary tensor extension, and its headers."""
    raw = array.astype("float32").tobytes()
    header = json.dumps({"inputs": [{
        "name": name, "datatype": "FP32", "shape": list(array.shape),
        "parameters": {"binary_data_size": len(raw)},
    }]}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header)),
                          "Content-Type": "application/octet-stream"}


def _samples(server: Server, name: str, labels: Mapping[str, str]) -> list[Any]:
    assert server.metrics_port is not None
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
    return [
        sample for family in text_string_to_metric_families(text) for sample in family.samples
        if sample.name == exported(name)
        and all(sample.labels.get(k) == v for k, v in labels.items())
    ]


def metric_total(server: Server, name: str, **labels: str) -> float:
    """Sum of a metric's samples (all replicas) from the Ray metrics export port."""
    return sum(sample.value for sample in _samples(server, name, labels))


def ready_replicas(server: Server, model: str) -> set[str]:
    """Serve replica ids of a model whose `medserve_replica_ready` gauge is 1: imaging and
    LLM replicas set it on a heartbeat that starts once the model is loaded."""
    return {s.labels["replica"] for s in _samples(server, REPLICA_READY, {"model": model})
            if s.value == 1}
