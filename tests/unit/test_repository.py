"""Manifests, cluster config and the repository loader (no Ray)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from serving.errors import ModelLoadError
from serving.repository.checksums import sha256_file
from serving.repository.store import load_cluster_config, load_repository
from tests.conftest import MODEL_REPO


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """A copy of the shipped repository (manifests and built weights) to break on purpose."""
    dst = tmp_path / "model_repo"
    shutil.copytree(MODEL_REPO, dst)
    return dst


def _edit(path: Path, **changes: object) -> None:
    doc = yaml.safe_load(path.read_text())
    doc.update(changes)
    path.write_text(yaml.safe_dump(doc))


def test_shipped_repository_loads_and_checksums_match() -> None:
    repo = load_repository(MODEL_REPO)
    assert set(repo.models) >= {"cxr-triage", "lung-nodule-ct"}
    cxr = repo.manifest("cxr-triage")
    assert len(cxr.labels) == 14 and cxr.modalities == ["CR", "DX"]
    repo.check()
    for manifest, version in repo.iter_versions():
        path = repo.weights_path(manifest.name, version)
        assert sha256_file(path) == version.weights.sha256


def test_unknown_key_is_rejected_at_load(repo_copy: Path) -> None:
    _edit(repo_copy / "cxr-triage" / "manifest.yaml", colour="blue")
    with pytest.raises(ModelLoadError, match="colour"):
        load_repository(repo_copy)


def test_unknown_nested_key_and_bad_values_are_rejected(repo_copy: Path) -> None:
    path = repo_copy / "cxr-triage" / "manifest.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["scaling"]["max_replicas"] = 0
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ModelLoadError, match="max_replicas"):
        load_repository(repo_copy)


def test_name_must_match_folder(repo_copy: Path) -> None:
    _edit(repo_copy / "cxr-triage" / "manifest.yaml", name="other-name")
    with pytest.raises(ModelLoadError, match="differs from its folder"):
        load_repository(repo_copy)


def test_default_version_must_exist(repo_copy: Path) -> None:
    _edit(repo_copy / "cxr-triage" / "manifest.yaml", default_version="9")
    with pytest.raises(ModelLoadError, match="default_version"):
        load_repository(repo_copy)


def test_checksum_mismatch_and_missing_weights(repo_copy: Path) -> None:
    weights = repo_copy / "cxr-triage" / "1" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    repo = load_repository(repo_copy)
    version = repo.manifest("cxr-triage").versions[0]
    assert repo.checksum_status("cxr-triage", version) == "mismatch"
    with pytest.raises(ModelLoadError, match="does not match"):
        repo.check()
    weights.unlink()
    assert repo.checksum_status("cxr-triage", version) == "missing"
    with pytest.raises(ModelLoadError, match="missing"):
        repo.check()


def test_cluster_config_rejects_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "medserve.yaml"
    path.write_text("http: {port: 8000, colour: blue}\n")
    with pytest.raises(ModelLoadError, match="colour"):
        load_cluster_config(path)
    path.write_text("http: {port: 9001}\n")
    assert load_cluster_config(path).http.port == 9001
