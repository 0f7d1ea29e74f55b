"""A model whose load fails stops only itself: its replica stays up, says it is not ready and
answers a fast retryable 503, while the other models of the repository load and serve (the
imaging deployment class, without Ray)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import yaml

from serving.deployments.imaging import ImagingModel
from serving.errors import Unavailable
from serving.imaging.pipeline import Payload
from serving.triton.build import copy_with_backend
from tests.conftest import MODEL_REPO

Replica = ImagingModel.func_or_class  # the class Serve instantiates in each replica


def test_a_model_that_fails_to_load_leaves_the_others_serving(tmp_path: Path) -> None:
    repo = copy_with_backend(MODEL_REPO, tmp_path / "repo", ["cxr-triage", "lung-nodule-ct"],
                             backend="torch")
    manifest = repo / "lung-nodule-ct" / "manifest.yaml"
    doc = yaml.safe_load(manifest.read_text())
    doc["versions"][0]["weights"]["sha256"] = "0" * 64  # the file no longer matches
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))

    broken = Replica(str(repo), "lung-nodule-ct", "1")
    assert broken.ready() is False
    with pytest.raises(Unavailable) as refused:  # before any decoding: the body is not read
        asyncio.run(broken.predict(Payload("application/zip", [b"not even a zip"])))
    assert refused.value.status_code == 503 and refused.value.retry_after_s
    assert "lung-nodule-ct version 1 failed to load" in refused.value.message

    healthy = Replica(str(repo), "cxr-triage", "1")
    assert healthy.ready() is True
    result = asyncio.run(healthy.backend.run([np.zeros((1, 1, 224, 224), np.float32)]))
    assert result[0].shape == (1, 14)
