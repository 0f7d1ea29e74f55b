"""Adapters added and removed at run time through the repository (no Ray): an import with its
checks, and an unload that leaves the repository consistent."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serving.errors import ModelLoadError, ModelNotFound
from serving.repository.runtime_adapters import ManifestWatch, add_adapter, remove_adapter
from serving.repository.store import load_repository
from tests.conftest import MODEL_REPO, linked_repo

LLM = "clinical-llm"


def test_an_adapter_is_added_checked_and_removed(tmp_path: Path) -> None:
    repo = linked_repo(tmp_path / "repo")
    source = shutil.copytree(MODEL_REPO / LLM / "1" / "adapters" / "gi-oncology",
                             tmp_path / "incoming")
    watch = ManifestWatch(repo, LLM)
    assert not watch.changed()

    add_adapter(repo, LLM, "gi-copy", source)
    assert watch.changed() and not watch.changed()  # one change, seen once
    manifest = load_repository(repo).llms[LLM]
    added = manifest.adapter("gi-copy")
    assert added.weights.sha256 and (repo / LLM / "1" / added.weights.file).is_file()
    with pytest.raises(ModelLoadError, match="already"):
        add_adapter(repo, LLM, "gi-copy", source)

    remove_adapter(repo, LLM, "gi-copy")
    assert watch.changed()
    manifest = load_repository(repo).llms[LLM]
    assert "gi-copy" not in {a.name for a in manifest.adapters}
    assert not (repo / LLM / "1" / "adapters" / "gi-copy").exists()
    load_repository(repo).check()
    with pytest.raises(ModelNotFound):
        remove_adapter(repo, LLM, "gi-copy")
    assert "gi-copy" not in (MODEL_REPO / LLM / "manifest.yaml").read_text()  # untouched


def test_a_folder_that_is_not_an_adapter_of_this_base_changes_nothing(tmp_path: Path) -> None:
    repo = linked_repo(tmp_path / "repo")
    before = (repo / LLM / "manifest.yaml").read_text()
    for bad in (tmp_path / "missing", Path("relative/path")):
        with pytest.raises(ModelLoadError):
            add_adapter(repo, LLM, "x", bad)
    broken = shutil.copytree(MODEL_REPO / LLM / "1" / "adapters" / "gi-oncology",
                             tmp_path / "broken")
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError):
        add_adapter(repo, LLM, "broken", broken)
    assert (repo / LLM / "manifest.yaml").read_text() == before
    assert not (repo / LLM / "1" / "adapters" / "broken").exists()
