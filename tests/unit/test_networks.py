"""Demo weights and the weights loader for every supported format (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from serving.errors import ModelLoadError
from serving.repository.checksums import sha256_file
from serving.repository.networks import (
    build_backbone,
    demo_state_dict,
    load_network,
    save_demo_weights,
)
from serving.repository.store import load_repository
from serving.schema.base import Weights
from tests.conftest import MODEL_REPO

REPO = load_repository(MODEL_REPO)


@pytest.mark.parametrize("model", ["cxr-triage", "lung-nodule-ct"])
def test_demo_weights_rebuild_to_the_manifest_checksum(tmp_path: Path, model: str) -> None:
    m = REPO.manifest(model)
    v = m.versions[0]
    out = tmp_path / "w.safetensors"
    save_demo_weights(m.architecture, v.weights, out)
    assert sha256_file(out) == v.weights.sha256
    other = v.weights.model_copy(update={"demo_seed": (v.weights.demo_seed or 0) + 1})
    save_demo_weights(m.architecture, other, out)
    assert sha256_file(out) != v.weights.sha256


def _sample(model: str) -> torch.Tensor:
    shape = (2, 1, 224, 224) if model == "cxr-triage" else (1, 1, 32, 32, 32)
    return torch.rand(shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("model", ["cxr-triage", "lung-nodule-ct"])
def test_state_dict_and_torchscript_load_to_the_same_outputs(tmp_path: Path, model: str) -> None:
    m = REPO.manifest(model)
    v = m.versions[0]
    reference = load_network(m.architecture, v.weights, REPO.verify(model, v), "cpu")
    state = load_file(str(REPO.verify(model, v)))

    pt = tmp_path / "model.pt"
    torch.save(state, pt)
    as_pt = Weights(file="model.pt", format="state_dict", sha256=sha256_file(pt))
    ts = tmp_path / "model.ts"
    backbone = build_backbone(m.architecture)
    backbone.load_state_dict(state)
    torch.jit.save(torch.jit.trace(backbone.eval(), _sample(model)), ts)
    as_ts = Weights(file="model.ts", format="torchscript", sha256=sha256_file(ts))

    x = _sample(model)
    with torch.inference_mode():
        want = reference(x)
        for weights, path in ((as_pt, pt), (as_ts, ts)):
            got = load_network(m.architecture, weights, path, "cpu")(x)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_loader_rejects_weights_of_another_architecture(tmp_path: Path) -> None:
    cxr, ct = REPO.manifest("cxr-triage"), REPO.manifest("lung-nodule-ct")
    path = REPO.verify("lung-nodule-ct", ct.versions[0])
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_network(cxr.architecture, cxr.versions[0].weights, path, "cpu")


def test_demo_weights_keep_norm_layers_at_identity() -> None:
    state = demo_state_dict(REPO.manifest("cxr-triage").architecture, seed=1)
    var = [t for k, t in state.items() if k.endswith("running_var")]
    assert var and all(torch.equal(t, torch.ones_like(t)) for t in var)
