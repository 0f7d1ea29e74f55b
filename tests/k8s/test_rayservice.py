"""The RayService as KubeRay and Ray read it: serveConfigV2 through Ray's schema and the real
application builder, worker groups through Ray's own KubeRay autoscaler config parser."""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import (
    _generate_available_node_types_from_ray_cr_spec as node_types_of,
)
from ray.serve._private.build_app import build_app as build_serve_app
from ray.serve.schema import ServeDeploySchema
from typer.testing import CliRunner

from serving.cli.main import app as cli
from serving.deploy.k8s import pods
from serving.deploy.k8s.groups import MAX_SURGE_PERCENT
from serving.repository.store import load_cluster_config, load_repository
from serving.topology.applications import AppArgs, ModelAppArgs, deployment_name
from tests.conftest import MODEL_REPO, ROOT
from tests.k8s.manifests import deployments, groups, rayservice, serve_config_v2

CONFIG = ROOT / "medserve.yaml"
SETTINGS = load_cluster_config(CONFIG).kubernetes

# KubeRay v1 fields this project may set, per level; anything else is a typo or a field of
# another KubeRay release. Deprecated no-ops (serviceUnhealthySecondThreshold, ...) are out.
RAYSERVICE_SPEC = {"serveConfigV2", "rayClusterConfig", "upgradeStrategy",
                   "excludeHeadPodFromServeSvc", "serveService"}
CLUSTER_SPEC = {"rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec",
                "workerGroupSpecs", "headServiceAnnotations", "suspend",
                "gcsFaultToleranceOptions"}
AUTOSCALER = {"upscalingMode", "idleTimeoutSeconds", "resources", "securityContext", "image",
              "imagePullPolicy", "env", "envFrom", "volumeMounts"}
HEAD_GROUP = {"rayStartParams", "template", "serviceType", "headService", "enableIngress"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams",
                "template", "scaleStrategy", "numOfHosts", "suspend"}


def test_rayservice_uses_only_known_kuberay_v1_fields(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    import ray

    for name, docs in rendered.items():
        rs = rayservice(docs)
        assert rs["apiVersion"] == "ray.io/v1"
        spec = rs["spec"]
        assert set(spec) <= RAYSERVICE_SPEC
        assert isinstance(spec["serveConfigV2"], str)  # KubeRay takes it as a YAML string
        assert spec["upgradeStrategy"] == {"type": "NewCluster"}  # zero-downtime upgrades
        cluster = spec["rayClusterConfig"]
        assert set(cluster) <= CLUSTER_SPEC
        assert cluster["rayVersion"] == ray.__version__  # head, workers and image agree
        assert cluster["enableInTreeAutoscaling"] is True
        assert set(cluster["autoscalerOptions"]) <= AUTOSCALER
        assert cluster["autoscalerOptions"]["upscalingMode"] in ("Default", "Aggressive",
                                                                 "Conservative")
        assert set(cluster["headGroupSpec"]) <= HEAD_GROUP
        assert cluster["workerGroupSpecs"], name
        for group in groups(docs).values():
            assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        for w in cluster["workerGroupSpecs"]:
            assert set(w) <= WORKER_GROUP
            assert 0 <= w["minReplicas"] <= w["replicas"] <= w["maxReplicas"]
            assert w["maxReplicas"] >= 1


@pytest.fixture(scope="module")
def built_deployments(rendered: dict[str, list[dict[str, Any]]]) -> dict[str, set[str]]:
    """Application -> the deployment names its import path builds (locally)."""
    out = {}
    for application in serve_config_v2(rendered["local"])["applications"]:
        module, attr = application["import_path"].split(":")
        builder = getattr(importlib.import_module(module), attr)
        args = {**application["args"], "model_repo": str(MODEL_REPO), "config": str(CONFIG),
                "device": "cpu"}
        built = build_serve_app(builder(args), name=application["name"])
        out[application["name"]] = {d.name for d in built.deployments}
    return out


def test_serve_config_v2_is_valid_for_ray_and_its_application_builder(
    rendered: dict[str, list[dict[str, Any]]], built_deployments: dict[str, set[str]],
) -> None:
    for name, docs in rendered.items():
        config = serve_config_v2(docs)
        schema = ServeDeploySchema.model_validate(config)
        assert schema.http_options.host == "0.0.0.0"
        for application in config["applications"]:
            module, attr = application["import_path"].split(":")
            assert callable(getattr(importlib.import_module(module), attr))
            schema = AppArgs if application["route_prefix"] == "/" else ModelAppArgs
            args = schema.model_validate(application["args"])  # the builder's own schema
            assert args.model_repo == pods.MODELS_DIR
            assert args.config == pods.IMAGE_CONFIG
            assert args.device == SETTINGS.overlays[name].device
            # Serve rejects options for a deployment the builder does not create.
            assert {d["name"] for d in application["deployments"]} \
                == built_deployments[application["name"]]
        assert set(built_deployments) == {a["name"] for a in config["applications"]}


def test_serve_config_v2_is_build_config_k8s_plus_placement(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path,
) -> None:
    for name, docs in rendered.items():
        out = tmp_path / f"{name}.yaml"
        result = CliRunner().invoke(cli, [
            "build-config", "--target", "k8s", "--overlay", name, "--out", str(out),
            "--repo", str(MODEL_REPO), "--config", str(CONFIG)])
        assert result.exit_code == 0, result.output
        ours = serve_config_v2(docs)
        # build-config's document (with the overlay's backends) plus only the documented k8s
        # adjustments: in-pod paths, the overlay's device, the worker-group resource, the
        # rolling-update surge.
        expected = yaml.safe_load(out.read_text())
        device = SETTINGS.overlays[name].device
        for application, mine in zip(expected["applications"], ours["applications"],
                                     strict=True):
            application["args"].update(model_repo=pods.MODELS_DIR, config=pods.IMAGE_CONFIG,
                                       device=device)
            for d, m in zip(application["deployments"], mine["deployments"], strict=True):
                d["ray_actor_options"]["resources"] = m["ray_actor_options"]["resources"]
                d["max_surge_percent"] = MAX_SURGE_PERCENT
                if device == "cpu":
                    d["ray_actor_options"]["num_gpus"] = 0
        assert ours == expected, name


def _fits(need: dict[str, float], free: dict[str, float]) -> bool:
    return all(free.get(k, 0) + 1e-9 >= v for k, v in need.items() if v)


def _nodes_for(replicas: list[dict[str, float]], capacity: dict[str, float]) -> int:
    """Independent first-fit decreasing over Ray resource dicts."""
    nodes: list[dict[str, float]] = []
    for need in sorted(replicas, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), reverse=True):
        node = next((n for n in nodes if _fits(need, n)), None)
        if node is None:
            assert _fits(need, capacity), f"{need} fits no pod of {capacity}"
            node = dict(capacity)
            nodes.append(node)
        for k, v in need.items():
            node[k] = node.get(k, 0) - v
    return len(nodes)


def test_ray_autoscaler_places_every_replica_on_exactly_one_group(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        types = node_types_of(rayservice(docs)["spec"]["rayClusterConfig"])
        low: dict[str, list[dict[str, float]]] = {t: [] for t in types}
        high: dict[str, list[dict[str, float]]] = {t: [] for t in types}
        for d in deployments(docs):
            actor = d["ray_actor_options"]
            need = {"CPU": actor.get("num_cpus", 1), "GPU": actor.get("num_gpus", 0),
                    **actor["resources"]}
            hosts = [t for t, spec in types.items() if _fits(need, spec["resources"])]
            assert len(hosts) == 1 and hosts[0] != "headgroup", (name, d["name"], hosts)
            scaling = d.get("autoscaling_config") or {}
            lo = scaling.get("min_replicas", d.get("num_replicas"))
            hi = scaling.get("max_replicas", d.get("num_replicas"))
            surge = math.ceil(hi * d["max_surge_percent"] / 100)
            low[hosts[0]] += [need] * lo
            high[hosts[0]] += [need] * (hi + surge)
        for t, spec in types.items():
            if t == "headgroup":
                assert spec["resources"]["CPU"] == 0  # the head hosts no replica
                continue
            assert high[t], f"{name}: group {t} hosts nothing"
            # Bounds are tight: enough pods for every replica, and not one more.
            assert _nodes_for(low[t], spec["resources"]) == spec["min_workers"], (name, t)
            assert _nodes_for(high[t], spec["resources"]) == spec["max_workers"], (name, t)


def test_gpu_groups_request_whole_gpus_and_replicas_their_manifest_fraction(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        overlay = SETTINGS.overlays[name]
        repo = load_repository(MODEL_REPO).with_backends(overlay.backends)
        # A triton-backend replica's GPU is its Triton sidecar's (test_triton_sidecar.py).
        fraction = {deployment_name(m.name, v.version):
                    0 if m.backend == "triton" else m.resources.gpus
                    for m, v in repo.iter_versions()}
        fraction |= {deployment_name(m.name, m.served_version): m.resources.gpus
                     for m in repo.llms.values()}
        wanted = {g.name: g for g in overlay.worker_groups}
        gpus = {d["name"]: d["ray_actor_options"].get("num_gpus", 0) for d in deployments(docs)}
        for deployment, expected in fraction.items():
            assert gpus[deployment] == (expected if overlay.device == "cuda" else 0)
        for group_name, group in groups(docs).items():
            if group_name == "head":
                continue
            spec = group["template"]["spec"]
            limits = spec["containers"][0]["resources"]["limits"]
            assert int(limits.get("nvidia.com/gpu", 0)) == wanted[group_name].gpus
            if wanted[group_name].gpus:
                assert {"key": "nvidia.com/gpu", "operator": "Exists",
                        "effect": "NoSchedule"} in spec["tolerations"]
                assert spec["nodeSelector"] == wanted[group_name].node_selector
            else:
                assert "tolerations" not in spec
    assert any(g.gpus for o in SETTINGS.overlays.values() for g in o.worker_groups)


def test_production_has_an_imaging_and_an_llm_gpu_group(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    pool = {d["name"]: next(iter(d["ray_actor_options"]["resources"]))
            for d in deployments(rendered["production"])}
    assert pool["Gateway"] == "medserve-pool-gateway"
    assert pool["cxr-triage-v1"] == pool["lung-nodule-ct-v1"] == "medserve-pool-imaging-gpu"
    if "clinical-llm-v1" in pool:
        assert pool["clinical-llm-v1"] == "medserve-pool-llm-gpu"


def test_ray_start_params_are_real_ray_start_options(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """KubeRay turns each param into `--key=value` on a bash command line: parse it that way
    with `ray start`'s own option parser."""
    import json
    import shlex

    from ray.scripts.scripts import start

    for name, docs in rendered.items():
        for group, spec in groups(docs).items():
            argv = [a for k, v in spec["rayStartParams"].items()
                    for a in shlex.split(f"--{k}={v}")]
            params = start.make_context("start", argv).params
            assert params["metrics_export_port"] in (
                p["containerPort"] for p in spec["template"]["spec"]["containers"][0]["ports"]
                if p["name"] == "metrics")
            probe = spec["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]
            assert params["dashboard_agent_listen_port"] == probe["port"]
            if group == "head":
                assert params["num_cpus"] == 0
            else:
                assert json.loads(params["resources"]) == {
                    f"medserve-pool-{group}": 1000}, (name, group)


def test_a_cluster_with_a_pacs_gives_its_ray_pods_the_credentials_from_a_secret() -> None:
    """`pacs:` names the environment variables of its basic-auth credentials; every Ray
    container (head and workers: a gateway may run on any) reads them from the
    `medserve-pacs` Secret, which may be absent (a PACS without auth)."""
    from serving.deploy.k8s.rayservice import rayservice as build
    from serving.repository.store import load_cluster_config
    from serving.schema.cluster import PacsConfig
    from tests.conftest import ROOT

    cluster = load_cluster_config(ROOT / "medserve.yaml")
    with_pacs = cluster.model_copy(update={"pacs": PacsConfig(
        url="https://pacs.hospital.example/dicom-web", username_env="PACS_USER",
        password_env="PACS_PASSWORD")})
    overlay = cluster.kubernetes.overlays["production"]
    for config, want in ((cluster, []), (with_pacs, ["PACS_USER", "PACS_PASSWORD"])):
        spec = build(ROOT / "model_repo", ROOT / "medserve.yaml", config, overlay)["spec"]
        clusters = spec["rayClusterConfig"]
        templates = [clusters["headGroupSpec"]["template"],
                     *(w["template"] for w in clusters["workerGroupSpecs"])]
        for template in templates:
            ray = template["spec"]["containers"][0]
            refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in ray["env"]
                    if "valueFrom" in e}
            assert list(refs) == want
            assert all(r["name"] == "medserve-pacs" and r["optional"] for r in refs.values())
            assert {r["key"] for r in refs.values()} == ({"username", "password"} if want
                                                         else set())
