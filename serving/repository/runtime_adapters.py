"""An LLM's LoRA adapters added and removed while it serves (vLLM's runtime adapter API).

The repository stays the one record of what is served: a runtime load is an import (a PEFT
folder, its sha256 recorded, its fit to the base model checked, the repository check run;
on any problem nothing changes), and an unload takes the adapter out of the manifest and its
folder away. Replicas read the manifest again when it changes (`ManifestWatch`), so nothing
restarts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from serving.errors import ModelLoadError, ModelNotFound
from serving.repository.importer import ImportOptions, import_model
from serving.repository.store import MANIFEST, load_repository
from serving.schema.llm import LLMManifest


def add_adapter(repo_root: Path, model: str, name: str, source: Path) -> None:
    if not source.is_absolute() or not source.is_dir():
        raise ModelLoadError("lora_path must be an absolute path to a PEFT adapter folder")
    import_model(repo_root, source, ImportOptions(name=f"{model}:{name}"))


def remove_adapter(repo_root: Path, model: str, name: str) -> None:
    path = repo_root / model / MANIFEST
    doc = yaml.safe_load(path.read_text())
    manifest = LLMManifest.model_validate(doc)
    try:
        adapter = manifest.adapter(name)
    except KeyError:
        raise ModelNotFound(f"{model} has no adapter {name!r}") from None
    folder = (repo_root / model / manifest.served_version / adapter.weights.file).parent
    doc["adapters"] = [a for a in doc.get("adapters", []) if a.get("name") != name]
    LLMManifest.model_validate(doc)
    previous = path.read_text()
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        load_repository(repo_root).check()
    except BaseException:
        path.write_text(previous)
        raise
    shutil.rmtree(folder, ignore_errors=True)


class ManifestWatch:
    """Whether a model's manifest changed on disk since the last look (one stat)."""

    def __init__(self, repo_root: Path, model: str) -> None:
        self.path = repo_root / model / MANIFEST
        self.seen = self._stamp()

    def _stamp(self) -> tuple[int, int]:
        try:
            st = self.path.stat()
        except OSError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_size)

    def changed(self) -> bool:
        stamp = self._stamp()
        if stamp == self.seen:
            return False
        self.seen = stamp
        return True
