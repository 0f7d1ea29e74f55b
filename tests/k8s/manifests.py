"""Rendering the kustomize overlays and reading what KubeRay will read, for the k8s tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

K8S = ROOT / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
# kubernetes-validate schema version: the kubectl on these machines is v1.32.
K8S_VERSION = "1.32.0"


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed: it renders the kustomize overlays")
    return path


def kustomize(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def rayservice(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (rs,) = by_kind(docs, "RayService")
    return rs


def serve_config_v2(docs: list[dict[str, Any]]) -> dict[str, Any]:
    doc = yaml.safe_load(rayservice(docs)["spec"]["serveConfigV2"])
    assert isinstance(doc, dict)
    return doc


def deployments(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every deployment of serveConfigV2, across its applications (a gateway, one per model
    version)."""
    return [d for a in serve_config_v2(docs)["applications"] for d in a["deployments"]]


def groups(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Group name ('head' for the head) -> its group spec."""
    cluster = rayservice(docs)["spec"]["rayClusterConfig"]
    return {"head": cluster["headGroupSpec"],
            **{w["groupName"]: w for w in cluster["workerGroupSpecs"]}}


def ray_pods(docs: list[dict[str, Any]], overlay: str) -> list[dict[str, Any]]:
    """Each group's pod template as the Pod KubeRay creates from it (before its own
    injections), so core-schema validation and checkov see the Ray pods themselves."""
    rs = rayservice(docs)
    pods = []
    for name, group in groups(docs).items():
        template = group["template"]
        pods.append({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {**template["metadata"], "name": f"{overlay}-{name}",
                         "namespace": rs["metadata"]["namespace"]},
            "spec": template["spec"],
        })
    return pods


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are evaluated here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
