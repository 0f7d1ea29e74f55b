"""The generated Serve config and the CLI, without starting Ray."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema
from typer.testing import CliRunner

from serving.cli.main import app
from serving.repository.store import load_repository
from serving.schema.cluster import ClusterConfig
from serving.topology.applications import (
    GATEWAY,
    JEMALLOC,
    deployment_name,
    deployment_options,
    serve_config,
    worker_env,
)
from tests.conftest import MODEL_REPO, ROOT

runner = CliRunner()


def test_serve_config_is_valid_for_ray_and_follows_the_manifests() -> None:
    doc = serve_config(str(MODEL_REPO), None, "local")
    schema = ServeDeploySchema.model_validate(doc)
    gateway, *models = schema.applications
    assert gateway.import_path == "serving.app:build_app" and gateway.route_prefix == "/"
    assert [d.name for d in gateway.deployments] == [GATEWAY]
    # One application per model version, one deployment each, no HTTP route of its own.
    assert {a.import_path for a in models} == {"serving.app:build_model"}
    assert all(a.route_prefix is None and len(a.deployments) == 1 for a in models)
    names = {a.deployments[0].name for a in models}
    repo = load_repository(MODEL_REPO)
    expected = {deployment_name(m.name, v.version) for m, v in repo.iter_versions()}
    expected |= {deployment_name(m.name, m.served_version) for m in repo.llms.values()}
    assert names == expected == {a.name for a in models}
    served = doc["applications"][0]["deployments"][0]["user_config"]["served"]
    assert {deployment_name(m, v) for m, vs in served.items() for v in vs} == expected
    cxr = repo.manifest("cxr-triage")
    entry = next(a["deployments"][0] for a in doc["applications"]
                 if a["name"] == deployment_name("cxr-triage", cxr.served_version))
    assert entry["max_ongoing_requests"] == cxr.scaling.max_ongoing_requests
    assert entry["ray_actor_options"]["num_cpus"] == cxr.resources.cpus
    # the proxy's timeout covers an upload and then the processing, each with its own
    # deadline inside Medserve (408, 504), so the proxy's plain-text timeout never fires first
    cluster = ClusterConfig()
    assert schema.http_options.request_timeout_s == doc["http_options"]["request_timeout_s"] \
        > cluster.limits.upload_timeout_s + cluster.http.request_timeout_s


def test_gpu_fraction_comes_from_the_manifest_only_where_gpus_are_used() -> None:
    ct = load_repository(MODEL_REPO).manifest("lung-nodule-ct")
    assert deployment_options(ct, gpu=True)["ray_actor_options"]["num_gpus"] == ct.resources.gpus
    assert deployment_options(ct, gpu=False)["ray_actor_options"]["num_gpus"] == 0
    k8s = serve_config(str(MODEL_REPO), None, "k8s")
    assert {a["args"]["device"] for a in k8s["applications"]} == {"cuda"}
    assert k8s["http_options"]["host"] == "0.0.0.0"


def test_the_workers_allocator_is_jemalloc_where_installed_and_always_in_the_image(
    tmp_path: Path,
) -> None:
    k8s = serve_config(str(MODEL_REPO), None, "k8s")["applications"]
    assert {a["runtime_env"]["env_vars"]["LD_PRELOAD"] for a in k8s} == {JEMALLOC}
    ServeDeploySchema.model_validate({"applications": k8s})
    local = serve_config(str(MODEL_REPO), None, "local")["applications"]
    assert {"runtime_env" in a for a in local} == {Path(JEMALLOC).exists()}
    system = tmp_path / "medserve.yaml"
    system.write_text(yaml.safe_dump({"ray": {"allocator": "system"}}))
    assert not any("runtime_env" in a
                   for a in serve_config(str(MODEL_REPO), str(system), "k8s")["applications"])
    assert worker_env(ClusterConfig.model_validate({"ray": {"allocator": "system"}}), "k8s") == {}


def test_autoscaling_bounds_come_from_the_manifest() -> None:
    cxr = load_repository(MODEL_REPO).manifest("cxr-triage")
    opts = deployment_options(cxr, gpu=False)
    assert opts["autoscaling_config"]["min_replicas"] == cxr.scaling.min_replicas
    assert opts["autoscaling_config"]["max_replicas"] == cxr.scaling.max_replicas


def test_cli_models_lists_and_checks(tmp_path: Path) -> None:
    listed = runner.invoke(app, ["models", "--repo", str(MODEL_REPO)])
    assert listed.exit_code == 0
    assert "cxr-triage" in listed.output and "ok" in listed.output
    ok = runner.invoke(app, ["models", "check", "--repo", str(MODEL_REPO)])
    assert ok.exit_code == 0, ok.output

    broken = tmp_path / "repo"
    shutil.copytree(MODEL_REPO, broken)
    (broken / "lung-nodule-ct" / "1" / "model.safetensors").write_bytes(b"tampered")
    bad = runner.invoke(app, ["models", "check", "--repo", str(broken)])
    assert bad.exit_code == 1
    assert "lung-nodule-ct" in bad.output and "does not match" in bad.output
    listed = runner.invoke(app, ["models", "--repo", str(broken)])
    assert "mismatch" in listed.output


def test_cli_build_config_writes_what_serve_deploy_reads(tmp_path: Path) -> None:
    out = tmp_path / "serve.yaml"
    result = runner.invoke(app, ["build-config", "--out", str(out), "--repo", str(MODEL_REPO),
                                 "--config", str(ROOT / "medserve.yaml")])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("# Generated")
    doc = yaml.safe_load(out.read_text())
    assert ServeDeploySchema.model_validate(doc).applications[0].args["model_repo"]


def test_serve_refuses_non_loopback_without_auth() -> None:
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--repo", str(MODEL_REPO)])
    assert result.exit_code == 1
    assert "refusing to bind" in result.output
