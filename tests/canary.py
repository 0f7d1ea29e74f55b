"""A model repository with cxr-triage alone, in two versions, for rollout and autoscaling tests.

Version "2" is a copy of version 1's weights under the same sha256: the tests tell versions
apart by the `model_version` Medserve reports, so building a second network (minutes of CPU)
buys nothing here; `medserve build-weights` with another `demo_seed` would give distinct ones.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import MODEL_REPO

MODEL = "cxr-triage"


def canary_repo(dst: Path, **manifest_changes: Any) -> Path:
    """Copy cxr-triage (only) into `dst` with versions 1 and 2; apply `manifest_changes`."""
    model = dst / MODEL
    shutil.copytree(MODEL_REPO / MODEL, model)
    shutil.copytree(model / "1", model / "2")
    doc = yaml.safe_load((model / "manifest.yaml").read_text())
    (v1,) = doc["versions"]
    doc["versions"] = [v1, {**v1, "version": "2"}]
    doc.update(manifest_changes)
    (model / "manifest.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return dst
