"""Placement of Serve deployments on worker groups and pod bounds, without Kubernetes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from serving.deploy.k8s.groups import Demand, assign, demands, pod_bounds, pods_needed
from serving.deploy.k8s.render import render
from serving.errors import ModelLoadError
from serving.schema.cluster import ClusterConfig
from serving.schema.kubernetes import Overlay, WorkerGroup
from tests.conftest import MODEL_REPO, ROOT

IMAGING = WorkerGroup(name="imaging-gpu", deployments=["*"], cpus=8, memory="32Gi", gpus=1)
LLM = WorkerGroup(name="llm-gpu", deployments=["clinical-llm*"], cpus=8, memory="64Gi", gpus=1)
GATEWAY = WorkerGroup(name="gateway", deployments=["Gateway"], cpus=2, memory="4Gi")


def _serve(*deployments: dict[str, Any]) -> dict[str, Any]:
    return {"applications": [{"deployments": list(deployments)}]}


def test_demands_read_fixed_and_autoscaled_replica_bounds() -> None:
    doc = _serve(
        {"name": "Gateway", "num_replicas": 2, "ray_actor_options": {"num_cpus": 0.25}},
        {"name": "cxr-triage-v1", "ray_actor_options": {"num_cpus": 1, "num_gpus": 0.25},
         "autoscaling_config": {"min_replicas": 0, "max_replicas": 5}},
    )
    assert demands(doc) == [Demand("Gateway", 0.25, 0.0, 2, 2),
                            Demand("cxr-triage-v1", 1.0, 0.25, 0, 5)]


def test_first_matching_group_wins_so_a_catch_all_goes_last() -> None:
    items = [Demand("Gateway", 0.25, 0, 1, 1), Demand("clinical-llm-v1", 1, 1, 1, 2),
             Demand("cxr-triage-v1", 1, 0.25, 1, 2)]
    placed = assign(items, [GATEWAY, LLM, IMAGING])
    assert [d.deployment for d in placed["llm-gpu"]] == ["clinical-llm-v1"]
    assert [d.deployment for d in placed["imaging-gpu"]] == ["cxr-triage-v1"]
    # Catch-all first: everything lands there, a GPU-less gateway pool could not take it.
    with pytest.raises(ModelLoadError, match="clinical-llm-v1"):
        assign(items[1:], [GATEWAY.model_copy(update={"deployments": ["*"]}), LLM])


def test_unplaceable_deployments_are_errors_at_generation_time() -> None:
    with pytest.raises(ModelLoadError, match="matches no worker group"):
        assign([Demand("lung-nodule-ct-v1", 1, 0.5, 1, 1)], [GATEWAY])
    with pytest.raises(ModelLoadError, match="2 GPU per replica"):
        assign([Demand("big-v1", 1, 2, 1, 1)], [IMAGING])


def test_pods_pack_gpu_fractions_first_fit_decreasing() -> None:
    assert pods_needed([], 8, 1) == 0
    assert pods_needed([(1, 0.25)] * 4, 8, 1) == 1
    assert pods_needed([(1, 0.25)] * 5, 8, 1) == 2
    assert pods_needed([(1, 0.5), (1, 0.25), (1, 0.5), (1, 0.25)], 8, 1) == 2
    assert pods_needed([(3, 0)] * 3, 4, 0) == 3  # CPU-bound on CPU pods


def test_pod_bounds_cover_min_replicas_and_max_plus_rolling_surge() -> None:
    cxr = Demand("cxr-triage-v1", 1, 0.25, 0, 4)  # surge: ceil(4 * 25%) = 1 more replica
    ct = Demand("lung-nodule-ct-v1", 1, 0.5, 1, 1)  # surge: 1
    assert pod_bounds(IMAGING, [cxr]) == (0, 2)  # scale to zero; 5 quarters need 2 GPUs
    assert pod_bounds(IMAGING, [cxr, ct]) == (1, 3)


def test_overlay_settings_are_checked_when_the_config_loads() -> None:
    with pytest.raises(ValidationError, match="unique"):
        Overlay(device="cuda", weights="object-store", worker_groups=[IMAGING, IMAGING])
    with pytest.raises(ValidationError, match="no GPU worker groups"):
        Overlay(device="cpu", weights="build", worker_groups=[IMAGING])
    with pytest.raises(ValidationError, match="quantity"):
        WorkerGroup(name="x", cpus=1, memory="lots")
    with pytest.raises(ValidationError, match="extra"):
        ClusterConfig.model_validate({"kubernetes": {"overlays": {}, "namespace": "x"}})


def test_a_group_no_deployment_needs_is_left_out(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "medserve.yaml").read_text())
    prod = config["kubernetes"]["overlays"]["production"]
    prod["worker_groups"].insert(1, {"name": "spare-gpu", "deployments": ["nothing-*"],
                                     "cpus": 4, "memory": "8Gi", "gpus": 1})
    path = tmp_path / "medserve.yaml"
    path.write_text(yaml.safe_dump(config))
    files = render(MODEL_REPO, path)
    doc = yaml.safe_load(files["overlays/production/generated/rayservice.yaml"])
    names = [w["groupName"] for w in doc["spec"]["rayClusterConfig"]["workerGroupSpecs"]]
    assert "spare-gpu" not in names and "imaging-gpu" in names
