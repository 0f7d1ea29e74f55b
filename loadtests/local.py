"""A local Medserve for profiling: every model pinned to one replica, so that what is
measured is one replica's capacity and the autoscaler cannot add a second one mid-sweep."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from serving.process import ServerProcess, running_server
from serving.repository import MANIFEST

# Enough logical CPU slots for every replica to be scheduled on a small machine (see
# medserve.yaml); torch threads are per model and unchanged.
RAY_CPU_SLOTS = 8


def pinned_repository(src: Path, dst: Path, models: list[str] | None = None) -> Path:
    """A copy of `src` whose manifests say one replica; everything else is symlinked."""
    dst.mkdir(parents=True, exist_ok=True)
    for manifest in sorted(Path(src).resolve().glob(f"*/{MANIFEST}")):
        folder = manifest.parent
        if models is not None and folder.name not in models:
            continue
        raw = yaml.safe_load(manifest.read_text())
        raw["scaling"] = {**raw.get("scaling", {}), "min_replicas": 1, "max_replicas": 1,
                          "initial_replicas": None}
        (dst / folder.name).mkdir(exist_ok=True)
        (dst / folder.name / MANIFEST).write_text(yaml.safe_dump(raw, sort_keys=False))
        for entry in folder.iterdir():
            if entry.name != MANIFEST:
                (dst / folder.name / entry.name).symlink_to(entry)
    return dst


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
