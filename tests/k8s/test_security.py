"""What the base and the generated pods promise each other: locked-down containers, weights
checked before Ray starts, network, disruption and scrape policies that select the Ray pods
by the labels and port names the generator gives them, and the image those pods expect."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from serving.deploy.k8s import pods
from serving.deploy.k8s.groups import pool_resource
from serving.repository.store import load_cluster_config, load_repository
from serving.topology.applications import GATEWAY
from tests.conftest import MODEL_REPO, ROOT
from tests.k8s.manifests import (
    by_kind,
    deployments,
    groups,
    ray_pods,
    rayservice,
    selects,
    serve_config_v2,
)

SETTINGS = load_cluster_config(ROOT / "medserve.yaml")
CHECK = f"medserve models check --repo {pods.MODELS_DIR}"


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]


def test_every_container_is_non_root_read_only_and_sized(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        for pod in ray_pods(docs, name):
            spec = pod["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            assert spec["serviceAccountName"] == pods.SERVICE_ACCOUNT
            # Only the head carries an API token, for KubeRay's autoscaler sidecar.
            assert spec["automountServiceAccountToken"] is pod["metadata"]["name"].endswith(
                "-head")
            for c in _containers(pod):
                sc = c["securityContext"]
                assert sc["runAsNonRoot"] and sc["runAsUser"] >= 10000, c["name"]
                assert sc["readOnlyRootFilesystem"] is True, c["name"]
                assert sc["allowPrivilegeEscalation"] is False, c["name"]
                assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
                assert c["resources"]["requests"] == c["resources"]["limits"], c["name"]
            ray = spec["containers"][0]
            assert ray["name"] in ("ray-head", "ray-worker")  # KubeRay's container index 0
            assert ray["livenessProbe"] and ray["readinessProbe"]
            assert "preStop" in ray["lifecycle"]
            assert spec["terminationGracePeriodSeconds"] > pods.PRESTOP_SLEEP_S
        autoscaler = rayservice(docs)["spec"]["rayClusterConfig"]["autoscalerOptions"]
        assert autoscaler["securityContext"]["runAsNonRoot"] is True
        assert autoscaler["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        ns = by_kind(docs, "Namespace")[0]
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        (sa,) = by_kind(docs, "ServiceAccount")
        assert sa["metadata"]["name"] == pods.SERVICE_ACCOUNT
        assert sa["automountServiceAccountToken"] is False


def test_graceful_shutdown_outlasts_serve_draining(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        drain = max(d.get("graceful_shutdown_timeout_s", 20) for d in deployments(docs))
        for pod in ray_pods(docs, name):
            hook = " ".join(pod["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"])
            sleep, grace = map(int, re.search(r"sleep (\d+).*--grace-period (\d+)", hook).groups())
            assert grace >= drain
            assert pod["spec"]["terminationGracePeriodSeconds"] >= sleep + grace


def test_weights_are_delivered_read_only_and_checked_before_ray_starts(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        overlay = SETTINGS.kubernetes.overlays[name]
        assert {a["args"]["model_repo"] for a in serve_config_v2(docs)["applications"]} \
            == {pods.MODELS_DIR}
        pool = {d["name"]: next(iter(d["ray_actor_options"]["resources"]))
                for d in deployments(docs)}
        for group, spec in groups(docs).items():
            hosts_models = any(p == pool_resource(group) and d != GATEWAY
                               for d, p in pool.items())
            inits = spec["template"]["spec"]["initContainers"]
            stage = inits[-1]["command"][-1]
            assert stage.startswith(f"cp -R {pods.IMAGE_MODEL_REPO}/. {pods.MODELS_DIR}/")
            # Init containers run in order; on a pod that loads models the checksum gate is
            # the last one. Others (the head: num-cpus 0) need the manifests only.
            assert (CHECK in stage) is hosts_models, (name, group)
            assert (group != "head") or not hosts_models
            fetch = [c for c in inits if c["name"] == "fetch-weights"]
            if hosts_models and overlay.weights == "object-store":
                assert inits[0] is fetch[0]
                assert SETTINGS.kubernetes.model_store.uri + "/" in fetch[0]["command"]
            else:
                assert not fetch
            assert ("medserve build-weights" in stage) is (
                hosts_models and overlay.weights == "build")
            ray = spec["template"]["spec"]["containers"][0]
            mounts = {m["mountPath"]: m for m in ray["volumeMounts"]}
            assert mounts[pods.MODELS_DIR]["readOnly"] is True
            volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
            assert volumes[mounts[pods.MODELS_DIR]["name"]]["emptyDir"]["sizeLimit"]
            assert volumes["tenants"]["secret"]["secretName"] in {
                s["metadata"]["name"] for s in by_kind(docs, "Secret")}
        assert any(CHECK in s["template"]["spec"]["initContainers"][-1]["command"][-1]
                   for s in groups(docs).values())


def _stage(command: str, image_repo: Path, models: Path) -> subprocess.CompletedProcess[str]:
    """Run the stage-models init command here, with the image and pod paths mapped."""
    medserve = shutil.which("medserve", path=str(Path(sys.executable).parent))
    assert medserve, "the medserve console script sits beside the test interpreter"
    command = (command.replace(pods.IMAGE_MODEL_REPO, str(image_repo))
               .replace(pods.MODELS_DIR, str(models)).replace("medserve ", f"{medserve} "))
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True,
                          timeout=300, check=False)


def test_stage_models_accepts_matching_weights_and_stops_the_pod_on_a_mismatch(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path,
) -> None:
    load_repository(MODEL_REPO).check()  # the weights `make test` built
    # The pods without a Triton sidecar (tests/k8s/test_triton_sidecar.py runs the other).
    (command,) = {c["command"][-1] for p in ray_pods(rendered["production"], "production")
                  for c in p["spec"]["initContainers"]
                  if CHECK in c["command"][-1] and "build-triton" not in c["command"][-1]}
    image = tmp_path / "image"  # what the Dockerfile copies: no weights (.dockerignore)
    shutil.copytree(MODEL_REPO, image, ignore=shutil.ignore_patterns("*.safetensors"))
    good = tmp_path / "good"  # what fetch-weights synced from the bucket
    shutil.copytree(MODEL_REPO, good)
    assert _stage(command, image, good).returncode == 0

    bad = tmp_path / "bad"
    shutil.copytree(MODEL_REPO, bad)
    (bad / "cxr-triage" / "1" / "model.safetensors").write_bytes(b"not the reviewed weights")
    result = _stage(command, image, bad)
    assert result.returncode != 0
    assert "does not match" in result.stdout + result.stderr


def _allowed_peers(docs: list[dict[str, Any]], labels: dict[str, str], port: str) -> list[Any]:
    """Peers that some NetworkPolicy lets reach `port` on a pod with `labels`."""
    peers = []
    for policy in by_kind(docs, "NetworkPolicy"):
        spec = policy["spec"]
        if not selects(spec["podSelector"], labels):
            continue
        for rule in spec.get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            if not ports or port in ports:
                peers += rule.get("from", [{"anywhere": True}])
    return peers


def test_only_the_ingress_reaches_serve_and_only_prometheus_the_metrics(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    internal = {"podSelector": {"matchLabels": pods.APP_LABEL}}
    ingress, prometheus = (
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
         "podSelector": {"matchLabels": {"app.kubernetes.io/name": app}}}
        for ns, app in (("ingress-nginx", "ingress-nginx"), ("monitoring", "prometheus"))
    )
    for name, docs in rendered.items():
        deny = [p for p in by_kind(docs, "NetworkPolicy") if p["spec"]["podSelector"] == {}]
        assert deny and "ingress" not in deny[0]["spec"]
        for pod in ray_pods(docs, name):
            labels = pod["metadata"]["labels"]
            names = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
            assert {"serve", "metrics"} <= names  # the policies' named ports exist
            serve = _allowed_peers(docs, labels, "serve")
            metrics = _allowed_peers(docs, labels, "metrics")
            assert ingress in serve and all(p in (ingress, internal) for p in serve), serve
            assert prometheus in metrics and all(p in (prometheus, internal) for p in metrics)


def test_disruption_budgets_and_pod_monitors_select_the_ray_pods(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        labels = {p["metadata"]["name"].removeprefix(f"{name}-"): p["metadata"]["labels"]
                  for p in ray_pods(docs, name)}
        ports = {g: {p["name"] for c in spec["template"]["spec"]["containers"]
                     for p in c["ports"]} for g, spec in groups(docs).items()}
        for kind in ("PodDisruptionBudget", "PodMonitor"):
            covered = set()
            for obj in by_kind(docs, kind):
                chosen = {g for g, lab in labels.items() if selects(obj["spec"]["selector"], lab)}
                assert chosen, obj["metadata"]["name"]
                assert chosen == {"head"} or "head" not in chosen  # head and workers apart
                covered |= chosen
                for endpoint in obj["spec"].get("podMetricsEndpoints", []):
                    having = {g for g in chosen if endpoint["port"] in ports[g]}
                    # Ray's port on every pod; a Triton sidecar's where a group has one.
                    assert having == chosen or endpoint["port"] == "triton-metrics", endpoint
            assert covered == set(labels), (name, kind)
        head_pdb = next(p for p in by_kind(docs, "PodDisruptionBudget")
                        if selects(p["spec"]["selector"], labels["head"]))
        assert head_pdb["spec"]["minAvailable"] == 1


def test_ingress_terminates_tls_and_routes_to_kuberays_serve_service(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    cluster = SETTINGS
    biggest = max(v for k, v in cluster.limits.model_dump().items() if k.endswith("_bytes"))
    for name, docs in rendered.items():
        (ing,) = by_kind(docs, "Ingress")
        hosts = {r["host"] for r in ing["spec"]["rules"]}
        assert hosts == {SETTINGS.kubernetes.overlays[name].ingress.host}
        assert hosts <= {h for t in ing["spec"]["tls"] for h in t["hosts"]}
        annotations = ing["metadata"]["annotations"]
        assert annotations["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"
        assert int(annotations["nginx.ingress.kubernetes.io/proxy-body-size"]) >= biggest
        backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        assert backend["name"] == f"{rayservice(docs)['metadata']['name']}-serve-svc"
        assert backend["port"]["number"] == cluster.http.port


def test_observability_objects_cover_every_model(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    repo = load_repository(MODEL_REPO)
    models = {*repo.models, *repo.llms}
    for docs in rendered.values():
        (rule,) = by_kind(docs, "PrometheusRule")
        named = {g["name"] for g in rule["spec"]["groups"]}
        assert {f"medserve-slo-{m}" for m in models} <= named
        alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
        assert alerts and all(r["expr"] for r in alerts)
        monitors = by_kind(docs, "PodMonitor")
        # The same Prometheus (release label) picks up the monitors and the rules.
        assert all(m["metadata"]["labels"]["release"] == rule["metadata"]["labels"]["release"]
                   for m in monitors)
        dashboards = [c for c in by_kind(docs, "ConfigMap")
                      if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
        assert len(dashboards) == 1 and "medserve.json" in dashboards[0]["data"]


def _dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return [(ln.split()[0].upper(), ln.split(maxsplit=1)[1]) for ln in lines]


def test_the_image_provides_what_the_pods_expect() -> None:
    steps = _dockerfile()
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    assert steps[0] == ("FROM", "nvidia/cuda:12.8.1-base-ubuntu22.04 AS python")
    assert ("USER", f"{pods.UID}:{pods.UID}") in final
    workdir = next(arg for op, arg in final if op == "WORKDIR")
    copies = set()
    for op, arg in final:
        if op == "COPY" and not arg.startswith("--from"):
            src, dest = arg.split()
            target = Path(workdir) / dest
            copies.add(str(target / Path(src).name if dest.endswith("/") else target))
    assert {pods.IMAGE_CONFIG, pods.IMAGE_MODEL_REPO} <= copies
    pyproject = (ROOT / "pyproject.toml").read_text()
    torch_pin = re.search(r'"(torch==[^"]+)"', pyproject)
    assert torch_pin and any(torch_pin.group(1) in arg for op, arg in steps if op == "RUN")
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "model_repo/**/*.safetensors" in ignored  # weights are delivered, never baked
    # `pip install .` in the build stage gets every package the `medserve` CLI imports.
    import tomllib

    packages = tomllib.loads(pyproject)["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {arg.split()[0] for op, arg in steps if op == "COPY"}
    for package in (p.rstrip("*") for p in packages):
        assert package in copied and package not in ignored, package


@pytest.mark.parametrize("field", ["runAsNonRoot", "readOnlyRootFilesystem"])
def test_lockdown_checks_fail_on_a_weakened_container(
    rendered: dict[str, list[dict[str, Any]]], field: str,
) -> None:
    import copy

    docs = copy.deepcopy(rendered["local"])
    rayservice(docs)["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
        "containers"][0]["securityContext"][field] = False
    with pytest.raises(AssertionError):
        test_every_container_is_non_root_read_only_and_sized({"local": docs})
