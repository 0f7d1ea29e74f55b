"""The production overlay runs cxr-triage in a Triton sidecar of the imaging worker group:
the overlay's `backends` reach the application builder, the sidecar gets its own GPU, its
model repository is built (ONNX) into a volume by the init container, and only the pods that
host a triton-backend model carry one."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve._private.build_app import build_app as build_serve_app

from serving.app import build_model
from serving.deploy.k8s import pods
from serving.deploy.k8s.render import render
from serving.errors import ModelLoadError
from serving.repository.store import load_cluster_config
from serving.topology.applications import deployment_name
from serving.triton.model_config import parse
from tests.conftest import MODEL_REPO, ROOT
from tests.k8s.manifests import deployments, groups, serve_config_v2
from tests.k8s.test_security import _stage

CONFIG = ROOT / "medserve.yaml"
OVERLAY = load_cluster_config(CONFIG).kubernetes.overlays["production"]


def _containers(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in spec["template"]["spec"]["containers"]}


def _port(container: dict[str, Any], name: str) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


def _pre_stop(container: dict[str, Any], pattern: str) -> str:
    found = re.search(pattern, " ".join(container["lifecycle"]["preStop"]["exec"]["command"]))
    assert found is not None, container["name"]
    return found.group(1)


def test_production_serves_its_triton_models_from_a_sidecar_on_their_group(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["production"]
    assert OVERLAY.backends == {"cxr-triage": "triton"}
    cxr = {d["name"]: d for d in deployments(docs)}[deployment_name("cxr-triage", "1")]
    group = next(iter(cxr["ray_actor_options"]["resources"])).removeprefix("medserve-pool-")
    for name, spec in groups(docs).items():
        containers = _containers(spec)
        if name != group:  # the head, the gateway and the LLM pods host no triton model
            assert set(containers) <= {"ray-head", "ray-worker"}, name
            continue
        ray, triton = containers["ray-worker"], containers["triton"]
        # The replicas call the sidecar of their own pod, on its gRPC port.
        gateway = serve_config_v2(docs)["applications"][0]
        assert gateway["args"]["triton_url"] == f"127.0.0.1:{_port(triton, 'triton-grpc')}"
        assert gateway["args"]["backends"] == OVERLAY.backends
        # The GPU of a triton-backend replica is Triton's, not Ray's.
        assert cxr["ray_actor_options"]["num_gpus"] == 0
        limits = triton["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) == OVERLAY.triton.gpus
        assert triton["image"] == OVERLAY.triton.image
        assert int(ray["resources"]["limits"]["nvidia.com/gpu"]) == next(
            g.gpus for g in OVERLAY.worker_groups if g.name == name)
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
            spec["template"]["spec"]["tolerations"])
        # Readiness and liveness on Triton's own health routes and HTTP port.
        http = _port(triton, "triton-http")
        for probe, path in (("startupProbe", "/v2/health/ready"),
                            ("readinessProbe", "/v2/health/ready"),
                            ("livenessProbe", "/v2/health/live")):
            assert triton[probe]["httpGet"] == {"path": path, "port": http}
        args = " ".join(triton["args"])
        for flag, port in (("http", http), ("grpc", _port(triton, "triton-grpc")),
                           ("metrics", _port(triton, "triton-metrics"))):
            assert f"--{flag}-port={port}" in args
        assert {"--model-control-mode=none", "--strict-readiness=true"} <= set(triton["args"])
        # The init container builds the ONNX repository into the volume Triton reads.
        repo_flag = re.search(r"--model-repository=(\S+)", args)
        assert repo_flag is not None
        mount = next(m for m in triton["volumeMounts"] if m["mountPath"] == repo_flag.group(1))
        assert mount["readOnly"] is True
        stage = spec["template"]["spec"]["initContainers"][-1]
        assert any(m["name"] == mount["name"] for m in stage["volumeMounts"])
        assert not any(m["name"] == mount["name"] for m in ray["volumeMounts"])
        assert re.search(rf"build-triton .*--out {repo_flag.group(1)} --format onnx "
                         r"--model cxr-triage$", stage["command"][-1])
        # Triton stays up until Ray has drained: its preStop outlasts Ray's.
        grace = int(_pre_stop(ray, r"--grace-period (\d+)"))
        assert int(_pre_stop(triton, r"sleep (\d+)")) >= int(_pre_stop(ray, r"sleep (\d+)")) + grace
        assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= int(
            _pre_stop(triton, r"sleep (\d+)"))
        break
    else:
        pytest.fail(f"no group {group}")


def test_the_application_builder_takes_the_overlays_backend_choice(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    bound = {}
    gateway, *models = serve_config_v2(rendered["production"])["applications"]
    for application in models:
        args = {**application["args"], "model_repo": str(MODEL_REPO), "config": str(CONFIG),
                "device": "cpu"}
        built = build_serve_app(build_model(args), name=application["name"])
        bound |= {d.name: d.init_args for d in built.deployments}
    # ImagingModel(repo_root, model, version, triton_url, backend)
    assert bound[deployment_name("cxr-triage", "1")][3:] == (gateway["args"]["triton_url"],
                                                             "triton")
    assert bound[deployment_name("lung-nodule-ct", "1")][4] == "torch"


def test_the_sidecars_init_step_builds_a_triton_repository(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path,
) -> None:
    """Run the imaging pods' stage-models command here (pod paths mapped to folders): it
    checks the weights, then exports cxr-triage to ONNX (checked against torch) with a GPU
    `config.pbtxt` for the sidecar."""
    (command,) = {c["command"][-1] for spec in groups(rendered["production"]).values()
                  for c in spec["template"]["spec"]["initContainers"]
                  if "build-triton" in c["command"][-1]}
    out = tmp_path / "triton-models"
    command = command.replace(pods.TRITON_REPO_DIR, str(out))
    image = tmp_path / "image"
    shutil.copytree(MODEL_REPO, image, ignore=shutil.ignore_patterns("*.safetensors"))
    models = tmp_path / "models"
    shutil.copytree(MODEL_REPO, models)
    result = _stage(command, image, models)
    assert result.returncode == 0, result.stdout + result.stderr
    config = parse((out / "cxr-triage" / "config.pbtxt").read_text())
    assert config.platform == "onnxruntime_onnx"
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    assert (out / "cxr-triage" / "1" / "model.onnx").stat().st_size > 1 << 20
    assert not (out / "lung-nodule-ct").exists()


def test_triton_on_a_cpu_overlay_or_an_unknown_model_is_refused_at_generation(
    tmp_path: Path,
) -> None:
    raw = yaml.safe_load(CONFIG.read_text())
    local = raw["kubernetes"]["overlays"]["local"]
    for backends, message in (({"cxr-triage": "triton"}, "cpu overlay"),
                              ({"no-such-model": "triton"}, "no-such-model")):
        local["backends"] = backends
        path = tmp_path / "medserve.yaml"
        path.write_text(yaml.safe_dump(raw))
        with pytest.raises(ModelLoadError, match=message):
            render(MODEL_REPO, path)
