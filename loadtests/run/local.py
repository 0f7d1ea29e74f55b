"""A local Medserve for profiling: every model pinned to one replica, so that what is
measured is one replica's capacity and the autoscaler cannot add a second one mid-sweep."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from serving.repository.store import MANIFEST
from serving.testing.process import ServerProcess, running_server

# Enough logical CPU slots for every replica to be scheduled on a small machine (see
# medserve.yaml); torch threads are per model and unchanged.
RAY_CPU_SLOTS = 8


def edited_repository(src: Path, dst: Path, edits: Mapping[str, Mapping[str, Any]]) -> Path:
    """A repository in `dst` holding only the models named in `edits`, each manifest with its
    top-level sections updated (a mapping merges into the section, anything else replaces
    it); every other file and folder is symlinked, so no weights are copied."""
    dst.mkdir(parents=True, exist_ok=True)
    for name, changes in edits.items():
        folder = Path(src).resolve() / name
        raw = yaml.safe_load((folder / MANIFEST).read_text())
        for key, value in changes.items():
            raw[key] = {**raw.get(key, {}), **value} if isinstance(value, Mapping) else value
        (dst / name).mkdir(exist_ok=True)
        (dst / name / MANIFEST).write_text(yaml.safe_dump(raw, sort_keys=False))
        for entry in folder.iterdir():
            if entry.name != MANIFEST:
                (dst / name / entry.name).symlink_to(entry)
    return dst


def pinned_repository(src: Path, dst: Path, models: list[str] | None = None) -> Path:
    """A copy of `src` (or of `models` only) whose manifests say one replica."""
    names = models or sorted(p.parent.name for p in Path(src).resolve().glob(f"*/{MANIFEST}"))
    one = {"scaling": {"min_replicas": 1, "max_replicas": 1, "initial_replicas": None}}
    return edited_repository(src, dst, dict.fromkeys(names, one))


@contextlib.contextmanager
def one_replica_server(repo: Path, models: list[str] | None = None) -> Iterator[ServerProcess]:
    with tempfile.TemporaryDirectory(prefix="medserve-capacity-") as tmp:
        root = Path(tmp)
        pinned = pinned_repository(repo, root / "model_repo", models)
        config = root / "medserve.yaml"
        config.write_text(yaml.safe_dump({"ray": {"num_cpus": RAY_CPU_SLOTS}}))
        with running_server("--repo", str(pinned), "--config", str(config),
                            log=root / "server.log", cwd=root) as server:
            yield server
