"""The committed overlays render, and they are exactly what `medserve build-k8s` generates."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from serving.cli.main import app
from serving.deploy.k8s.render import GENERATED, drift, render
from serving.repository.store import load_cluster_config
from tests.conftest import MODEL_REPO, ROOT
from tests.k8s.manifests import K8S, OVERLAYS, by_kind, kustomize

runner = CliRunner()
CONFIG = ROOT / "medserve.yaml"


def test_every_configured_overlay_is_committed_and_renders(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    assert sorted(load_cluster_config(CONFIG).kubernetes.overlays) == OVERLAYS
    assert {"local", "production"} <= set(OVERLAYS)
    for name, docs in rendered.items():
        kinds = {d["kind"] for d in docs}
        assert {"RayService", "Ingress", "NetworkPolicy", "PodDisruptionBudget", "PodMonitor",
                "Secret", "ServiceAccount", "Namespace"} <= kinds, name
        assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
            "medserve"}
    base = kustomize(K8S / "base")
    assert not by_kind(base, "RayService")  # generated per overlay, never in the base


def test_committed_generated_files_do_not_drift_from_the_repository() -> None:
    stale = drift(K8S, render(MODEL_REPO, CONFIG))
    assert not stale, f"run `medserve build-k8s`: {stale}"


def _copy(tmp_path: Path) -> Path:
    out = tmp_path / "k8s"
    shutil.copytree(K8S, out)
    return out


def test_drift_is_found_and_build_k8s_rewrites_it(tmp_path: Path) -> None:
    out = _copy(tmp_path)
    target = out / "overlays" / "production" / GENERATED / "rayservice.yaml"
    doc = yaml.safe_load(target.read_text())
    doc["spec"]["serveConfigV2"] = doc["spec"]["serveConfigV2"].replace(
        "max_replicas: 2", "max_replicas: 3", 1)
    target.write_text(yaml.safe_dump(doc))
    (out / "overlays" / "local" / GENERATED / "leftover.yaml").write_text("kind: ConfigMap\n")

    args = ["build-k8s", "--out", str(out), "--repo", str(MODEL_REPO), "--config", str(CONFIG)]
    checked = runner.invoke(app, [*args, "--check"])
    assert checked.exit_code == 1
    assert "production/generated/rayservice.yaml" in checked.output
    assert "leftover.yaml" in checked.output

    assert runner.invoke(app, args).exit_code == 0
    assert not (out / "overlays" / "local" / GENERATED / "leftover.yaml").exists()
    assert runner.invoke(app, [*args, "--check"]).exit_code == 0
    assert target.read_text() == (K8S / target.relative_to(out)).read_text()


def test_a_manifest_change_changes_the_generated_overlay(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(MODEL_REPO, repo, ignore=shutil.ignore_patterns("*.safetensors"))
    manifest = repo / "cxr-triage" / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("max_replicas: 2", "max_replicas: 9"))
    files = render(repo, CONFIG)
    stale = drift(K8S, files)
    assert "overlays/production/generated/rayservice.yaml" in stale
    prod = yaml.safe_load(files["overlays/production/generated/rayservice.yaml"])
    workers = {w["groupName"]: w for w in prod["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    committed = yaml.safe_load(
        (K8S / "overlays/production/generated/rayservice.yaml").read_text())
    before = {w["groupName"]: w
              for w in committed["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    # More cxr replicas need more imaging GPU pods at the top of the range.
    assert workers["imaging-gpu"]["maxReplicas"] > before["imaging-gpu"]["maxReplicas"]
