"""ONNX models: the ONNX Runtime backend against torch on the same weights, the checks that
run before anything is served, and `medserve models import` (no Ray)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from onnx import TensorProto, helper
from typer.testing import CliRunner

from serving.backends.onnx_backend import OnnxBackend
from serving.backends.torch_backend import TorchBackend
from serving.cli.main import app
from serving.errors import ModelLoadError
from serving.repository.checksums import sha256_file
from serving.repository.importer import ImportOptions, import_model
from serving.repository.onnx_graph import check_onnx, graph_tensors
from serving.repository.store import load_repository
from serving.schema.imaging import ModelManifest, TensorSpec
from serving.triton.onnx_export import export_onnx
from tests.conftest import MODEL_REPO

CXR = "cxr-triage"
INTENDED = "Decision support for readers of adult chest radiographs; the clinician decides."


@pytest.fixture(scope="module")
def cxr_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cxr-triage's demo weights exported to ONNX (the whole network, dynamic batch axis)."""
    repo = load_repository(MODEL_REPO)
    manifest = repo.manifest(CXR)
    version = manifest.version(manifest.served_version)
    out = tmp_path_factory.mktemp("onnx") / "cxr.onnx"
    export_onnx(manifest, version, repo.verify(CXR, version), out)
    return out


def onnx_manifest(path: Path) -> ModelManifest:
    """cxr-triage's manifest with one ONNX version and no architecture: the file is the graph."""
    doc = load_repository(MODEL_REPO).manifest(CXR).model_dump()
    doc["architecture"] = None
    doc["versions"] = [{"version": "1", "weights": {"file": path.name, "format": "onnx",
                                                    "sha256": sha256_file(path)}}]
    return ModelManifest.model_validate(doc)


def images(*batches: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.standard_normal((n, 1, 224, 224)).astype(np.float32) for n in batches]


def test_onnx_runtime_matches_torch_on_the_same_weights(cxr_onnx: Path) -> None:
    repo = load_repository(MODEL_REPO)
    manifest = repo.manifest(CXR)
    version = manifest.version(manifest.served_version)
    torch_backend = TorchBackend(manifest, version, repo.verify(CXR, version), "cpu")
    onnx_backend = OnnxBackend(onnx_manifest(cxr_onnx), cxr_onnx, "cpu")
    batch = images(1, 3, 2)  # one batch of three requests, six images
    expected = asyncio.run(torch_backend.run(batch))
    got = asyncio.run(onnx_backend.run(batch))
    assert [g.shape for g in got] == [(1, 14), (3, 14), (2, 14)]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, atol=1e-4)
    assert not np.allclose(got[1][0], got[1][1])  # different images, different outputs


def _tiny(path: Path, batch: int | None, in_channels: int = 1) -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Conv2d(in_channels, 2, 3), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Sigmoid()).eval()
    x = torch.zeros(batch or 1, in_channels, 16, 16)
    axes = {"x": {0: "n"}, "y": {0: "n"}} if batch is None else None
    torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes=axes)
    return net


def _tiny_manifest(path: Path) -> ModelManifest:
    doc = onnx_manifest(path).model_dump()
    doc.update(labels=["a", "b"], finding_codes={},
               preprocessing={"kind": "radiograph", "spatial_size": [16, 16]},
               inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 1, 16, 16]}],
               outputs=[{"name": "y", "datatype": "FP32", "shape": [-1, 2]}])
    return ModelManifest.model_validate(doc)


def test_a_fixed_batch_graph_takes_any_batch_in_padded_chunks(tmp_path: Path) -> None:
    path = tmp_path / "fixed.onnx"
    net = _tiny(path, batch=4)
    backend = OnnxBackend(_tiny_manifest(path), path, "cpu")
    assert backend.fixed_batch == 4
    x = [np.random.default_rng(1).standard_normal((n, 1, 16, 16)).astype(np.float32)
         for n in (3, 3)]  # six images: a full chunk of four and a padded one of two
    got = asyncio.run(backend.run(x))
    with torch.no_grad():
        expected = [net(torch.from_numpy(a)).numpy() for a in x]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, atol=1e-5)


def test_graph_tensors_are_read_from_the_file(cxr_onnx: Path) -> None:
    inputs, outputs = graph_tensors(cxr_onnx)
    assert inputs == [TensorSpec(name="image", datatype="FP32", shape=[-1, 1, 224, 224])]
    assert outputs == [TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 14])]


def test_problems_are_named_with_the_file_before_serving(tmp_path: Path, cxr_onnx: Path) -> None:
    manifest = onnx_manifest(cxr_onnx)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(cxr_onnx.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match=r"corrupt\.onnx: not a valid ONNX model"):
        check_onnx(corrupt, manifest.inputs, manifest.outputs)

    wrong = [TensorSpec(name="image", datatype="FP32", shape=[-1, 1, 256, 256])]
    with pytest.raises(ModelLoadError, match="manifest declares FP32 \\[-1, 1, 256, 256\\]"):
        check_onnx(cxr_onnx, wrong, manifest.outputs)

    # An operator no ONNX Runtime kernel implements (a vendor's custom op).
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.vendor")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])])
    custom = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.vendor", 1)]),
              str(custom))
    spec_x = [TensorSpec(name="x", datatype="FP32", shape=[-1, 2])]
    spec_y = [TensorSpec(name="y", datatype="FP32", shape=[-1, 2])]
    with pytest.raises(ModelLoadError, match=r"custom\.onnx: ONNX Runtime cannot run it"):
        check_onnx(custom, spec_x, spec_y)


def test_weights_only_versions_still_need_an_architecture(cxr_onnx: Path) -> None:
    doc = onnx_manifest(cxr_onnx).model_dump()
    doc["versions"].append({"version": "2", "weights": {"file": "w.safetensors",
                                                        "sha256": "0" * 64}})
    with pytest.raises(ValueError, match="versions 2 hold weights only"):
        ModelManifest.model_validate(doc)


def _labels_csv() -> str:
    return ",".join(load_repository(MODEL_REPO).manifest(CXR).labels)


def test_import_writes_a_checked_manifest_and_serves_new_versions(
    tmp_path: Path, cxr_onnx: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    args = ["models", "import", str(cxr_onnx), "--name", "vendor-cxr", "--repo", str(repo),
            "--labels", _labels_csv(), "--modalities", "CR,DX"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and "no intended-use statement" in refused.output
    assert not (repo / "vendor-cxr").exists()  # nothing left behind

    done = CliRunner().invoke(app, [*args, "--intended-use", INTENDED])
    assert done.exit_code == 0, done.output
    manifest = load_repository(repo).manifest("vendor-cxr")
    assert manifest.architecture is None and manifest.task == "classification"
    assert manifest.inputs[0].shape == [-1, 1, 224, 224] and manifest.outputs[0].name == (
        "probabilities")
    (v1,) = manifest.versions
    assert v1.weights.format == "onnx" and v1.weights.sha256 == sha256_file(cxr_onnx)
    assert (repo / "vendor-cxr" / "1" / "model.onnx").read_bytes() == cxr_onnx.read_bytes()
    assert manifest.preprocessing.kind == "radiograph"
    assert manifest.preprocessing.spatial_size == (224, 224)

    again = CliRunner().invoke(app, ["models", "import", str(cxr_onnx), "--name", "vendor-cxr",
                                     "--repo", str(repo)])
    assert again.exit_code == 0, again.output
    assert [v.version for v in load_repository(repo).manifest("vendor-cxr").versions] == [
        "1", "2"]
    check = CliRunner().invoke(app, ["models", "check", "--repo", str(repo)])
    assert check.exit_code == 0, check.output


def test_import_reads_the_files_own_metadata(tmp_path: Path, cxr_onnx: Path) -> None:
    model = onnx.load(str(cxr_onnx))
    helper.set_model_props(model, {"intended_use": INTENDED, "labels": _labels_csv(),
                                   "description": "A vendor's triage model"})
    tagged = tmp_path / "tagged.onnx"
    onnx.save(model, str(tagged))
    path = import_model(tmp_path / "repo", tagged, ImportOptions(name="tagged"))
    doc = yaml.safe_load(path.read_text())
    assert doc["intended_use"] == INTENDED and doc["description"] == "A vendor's triage model"
    assert doc["labels"] == _labels_csv().split(",")


def test_import_refuses_what_it_cannot_serve(tmp_path: Path, cxr_onnx: Path) -> None:
    repo = tmp_path / "repo"
    few = ImportOptions(name="few-labels", intended_use=INTENDED, labels=["a", "b"])
    with pytest.raises(ModelLoadError, match="labels"):
        import_model(repo, cxr_onnx, few)
    scripted = tmp_path / "net.ts"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(scripted))
    with pytest.raises(ModelLoadError, match="does not say its input shape"):
        import_model(repo, scripted, ImportOptions(name="scripted", intended_use=INTENDED))
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="model_type None is not a causal LM"):
        import_model(repo, hf, ImportOptions(name="chat", intended_use=INTENDED))
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    with pytest.raises(ModelLoadError, match="not a model this command recognises"):
        import_model(repo, text, ImportOptions(name="notes", intended_use=INTENDED))
    assert not any(repo.glob("*/manifest.yaml")) if repo.exists() else True
