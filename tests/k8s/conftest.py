"""Session fixtures for the k8s tests: every overlay rendered once, checkov run once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.k8s.manifests import K8S, OVERLAYS, kustomize, ray_pods

CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Overlay name -> the documents `kubectl kustomize` renders for it."""
    return {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="session")
def checkov_report(
    rendered: dict[str, list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """checkov's JSON report per framework, over every rendered overlay, the Ray pods
    extracted from each RayService (checkov does not look inside CRDs) and the Dockerfile."""
    exe = os.environ.get("CHECKOV") or (str(CHECKOV) if CHECKOV.exists() else None)
    if exe is None:
        pytest.skip("checkov is not installed: `make tools` puts it in .venv-tools")
    scan = tmp_path_factory.mktemp("checkov")
    for name, docs in rendered.items():
        (scan / f"{name}.yaml").write_text(yaml.safe_dump_all([*docs, *ray_pods(docs, name)]))
    shutil.copy(ROOT / "Dockerfile", scan / "Dockerfile")
    out = subprocess.run(
        [exe, "--directory", str(scan), "--framework", "kubernetes", "dockerfile", "secrets",
         "--output", "json", "--skip-download"],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"}, cwd=scan,
    )
    assert out.returncode in (0, 1), out.stderr[-3000:]  # 1: some check failed
    reports = json.loads(out.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    return {r["check_type"]: r for r in reports}
