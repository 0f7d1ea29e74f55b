"""Triton model repository, Python-backend model, ONNX export and backend errors (no Triton)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

from serving.backends.triton_backend import TritonBackend
from serving.cli.main import app
from serving.errors import MedserveError, ModelLoadError, Unavailable
from serving.net import free_port
from serving.repository.checksums import sha256_file
from serving.repository.networks import load_network
from serving.repository.store import Repository, load_repository
from serving.schema.imaging import TritonSettings
from serving.triton.build import build_repository, copy_with_backend
from serving.triton.embedded import triton_endpoint
from serving.triton.model_config import MANIFEST_PARAM, model_config, parse, render
from serving.triton.python_model import TritonPythonModel
from serving.triton.server import TritonServer, locate, server_env
from tests.conftest import MODEL_REPO

IMAGING = ["cxr-triage", "lung-nodule-ct"]


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    """The shipped imaging models, backend switched to triton (weights hard-linked)."""
    return load_repository(copy_with_backend(MODEL_REPO, tmp_path / "repo", IMAGING))


def _reference(repo: Repository, name: str, x: np.ndarray) -> np.ndarray:
    m = repo.manifest(name)
    v = m.version(m.served_version)
    net = load_network(m.architecture, v.weights, repo.verify(name, v), "cpu")
    with torch.inference_mode():
        return net(torch.from_numpy(x)).numpy()


def _kind(value: int) -> str:
    return mc.ModelInstanceGroup.Kind.Name(value)


def test_config_follows_the_manifest(repo: Repository) -> None:
    cxr = repo.manifest("cxr-triage")
    config = parse(render(model_config(cxr, "python", threads=1)))  # round trip: valid text
    assert config.backend == "python" and config.max_batch_size == cxr.batching.max_batch_size
    assert [(t.name, list(t.dims)) for t in config.input] == [("image", [1, 224, 224])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("probabilities", [14])]
    batching = config.dynamic_batching
    assert batching.max_queue_delay_microseconds == round(cxr.batching.batch_wait_timeout_ms * 1e3)
    assert (batching.priority_levels, batching.default_priority_level) == (2, 2)
    assert [(_kind(g.kind), g.count) for g in config.instance_group] == [("KIND_CPU", 1)]
    assert list(config.version_policy.specific.versions) == [1]
    carried = json.loads(config.parameters[MANIFEST_PARAM].string_value)
    assert carried == json.loads(cxr.model_dump_json())


def test_ct_config_serves_sliding_windows_and_onnx_runs_on_gpu(repo: Repository) -> None:
    ct = repo.manifest("lung-nodule-ct")
    config = model_config(ct, "onnx")
    assert config.platform == "onnxruntime_onnx" and not config.parameters
    assert config.max_batch_size == ct.preprocessing.sw_batch_size  # type: ignore[union-attr]
    assert list(config.input[0].dims) == [1, 64, 64, 64]
    assert list(config.output[0].dims) == [2, 64, 64, 64]
    assert _kind(config.instance_group[0].kind) == "KIND_GPU"


def test_triton_settings_are_validated(repo: Repository) -> None:
    settings = TritonSettings(max_queue_delay_ms=0.5, priority_levels=3, instance_count=2)
    cxr = repo.manifest("cxr-triage").model_copy(update={"triton": settings})
    batching = model_config(cxr, "python").dynamic_batching
    assert batching.max_queue_delay_microseconds == 500
    assert (batching.priority_levels, batching.default_priority_level) == (3, 3)
    assert model_config(cxr, "python").instance_group[0].count == 2
    with pytest.raises(ValidationError):
        TritonSettings(priority_levels=2, default_priority_level=3)
    with pytest.raises(ValidationError):
        TritonSettings.model_validate({"queue_delay": 1})  # unknown keys are errors
    path = repo.root / "cxr-triage" / "manifest.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["versions"][0]["version"] = raw["default_version"] = "v1"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ModelLoadError, match="integer version"):
        load_repository(repo.root)


def test_build_writes_a_self_contained_python_backend_repository(
    repo: Repository, tmp_path: Path
) -> None:
    out = tmp_path / "triton"
    built = build_repository(repo, out)
    assert sorted(p.name for p in built) == sorted(IMAGING)
    for name in IMAGING:
        v = repo.manifest(name).versions[0]
        vdir = out / name / v.version
        assert "serving.triton.python_model" in (vdir / "model.py").read_text()
        assert sha256_file(vdir / v.weights.file) == v.weights.sha256
        assert parse((out / name / "config.pbtxt").read_text()).name == name
    with pytest.raises(ModelLoadError, match="unknown model"):
        build_repository(repo, out, names=["nope"])
    torch_repo = load_repository(
        copy_with_backend(MODEL_REPO, tmp_path / "torch", IMAGING, backend="torch")
    )
    with pytest.raises(ModelLoadError, match="no model selects"):
        build_repository(torch_repo, out)
    assert build_repository(torch_repo, out, names=["cxr-triage"])  # named: built anyway


def test_cli_build_triton(repo: Repository, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["build-triton", "--repo", str(repo.root), "--out", str(out), "--model", "cxr-triage"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "cxr-triage" / "config.pbtxt").is_file()
    assert not (out / "lung-nodule-ct").exists()
    bad = CliRunner().invoke(app, [*args[:-2], "--format", "tensorrt"])
    assert bad.exit_code == 1


def _python_model(out: Path, name: str) -> TritonPythonModel:
    config = parse((out / name / "config.pbtxt").read_text())
    params = {k: {"string_value": p.string_value} for k, p in config.parameters.items()}
    model = TritonPythonModel()
    model.initialize({
        "model_config": json.dumps({"parameters": params}),
        "model_repository": str(out / name), "model_version": "1",
        "model_instance_kind": "CPU",
    })
    return model


def test_python_backend_model_matches_torch_and_verifies_weights(
    repo: Repository, tmp_path: Path
) -> None:
    out = tmp_path / "triton"
    build_repository(repo, out)
    model = _python_model(out, "cxr-triage")
    rng = np.random.default_rng(3)
    # Two requests of a dynamic batch, each with its own rows.
    a, b = (rng.standard_normal((n, 1, 224, 224)).astype(np.float32) for n in (2, 1))
    ya, yb = model.forward([a, b])
    assert ya.shape == (2, 14) and yb.shape == (1, 14)
    np.testing.assert_allclose(np.concatenate([ya, yb]), _reference(repo, "cxr-triage",
                                                                     np.concatenate([a, b])),
                               atol=1e-4)
    weights = out / "lung-nodule-ct" / "1" / "model.safetensors"
    data = weights.read_bytes()
    weights.unlink()  # a hard link: replace it rather than edit the shipped file
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ModelLoadError, match="sha256"):
        _python_model(out, "lung-nodule-ct")


def test_onnx_export_matches_torch(repo: Repository, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    name, out = "cxr-triage", tmp_path / "onnx"
    build_repository(repo, out, "onnx", [name])
    path = out / name / "1" / "model.onnx"
    assert path.stat().st_size > 0
    import onnxruntime as ort

    m = repo.manifest(name)
    x = np.random.default_rng(5).standard_normal((3, 1, 224, 224)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run([m.outputs[0].name], {m.inputs[0].name: x})
    np.testing.assert_allclose(y, _reference(repo, name, x), atol=1e-4)


def test_backend_answers_503_at_once_when_triton_is_down(repo: Repository) -> None:
    cxr = repo.manifest("cxr-triage")
    backend = TritonBackend(cxr, cxr.versions[0], f"127.0.0.1:{free_port()}")  # nothing there
    assert backend.ready() is False
    start = time.monotonic()
    with pytest.raises(Unavailable) as err:
        asyncio.run(backend.run([np.zeros((1, 1, 224, 224), np.float32)]))
    assert time.monotonic() - start < cxr.triton.timeout_s
    assert err.value.status_code == 503 and err.value.retry_after_s
    invalid = InferenceServerException("bad dims", status="StatusCode.INVALID_ARGUMENT")
    unknown = backend._error(invalid)
    assert type(unknown) is MedserveError and unknown.status_code == 500
    assert "bad dims" not in unknown.message  # Triton's text stays in the log


def test_embedded_triton_only_when_needed(repo: Repository, tmp_path: Path) -> None:
    with triton_endpoint(repo, "10.0.0.1:8001") as url:  # given: used as is, nothing started
        assert url == "10.0.0.1:8001"
    torch_repo = load_repository(
        copy_with_backend(MODEL_REPO, tmp_path / "torch", IMAGING, backend="torch")
    )
    with triton_endpoint(torch_repo, None) as url:
        assert url is None


def test_server_command_uses_the_wheel_binary_and_this_interpreter(tmp_path: Path) -> None:
    dist = locate()
    assert dist.binary.is_file() and dist.stub.is_file()
    env = server_env(dist)
    assert str(dist.libs) in env["LD_LIBRARY_PATH"]
    server = TritonServer(tmp_path)
    try:
        cmd = server.command()
        assert cmd[0] == str(dist.binary)
        assert "--grpc-address=127.0.0.1" in cmd and "--http-address=127.0.0.1" in cmd
        assert (Path(cmd[2].split("=", 1)[1]) / "python" / "triton_python_backend_stub").is_file()
    finally:
        server.close()


def test_triton_backend_replicas_leave_the_gpu_to_triton(repo: Repository) -> None:
    from serving.topology.applications import deployment_options

    cxr = repo.manifest("cxr-triage")
    assert cxr.resources.gpus > 0
    assert deployment_options(cxr, gpu=True)["ray_actor_options"]["num_gpus"] == 0
    as_torch = cxr.model_copy(update={"backend": "torch"})
    assert deployment_options(as_torch, gpu=True)["ray_actor_options"]["num_gpus"] > 0


def test_backend_spreads_a_batch_over_triton_instances(repo: Repository) -> None:
    cxr = repo.manifest("cxr-triage")
    cxr = cxr.model_copy(update={"triton": TritonSettings(instance_count=2)})
    backend = TritonBackend(cxr, cxr.versions[0], f"127.0.0.1:{free_port()}")
    sent: list[int] = []

    async def infer(client: object, x: np.ndarray) -> np.ndarray:
        sent.append(len(x))
        return x[:, 0, 0, :14] + 1  # rows stay with their inputs

    backend._infer = infer  # type: ignore[method-assign]
    items = [np.full((n, 1, 224, 224), n, np.float32) for n in (3, 2)]
    outputs = asyncio.run(backend.run(items))
    assert sorted(sent) == [2, 3]  # one request per instance
    assert [o[:, 0].tolist() for o in outputs] == [[4, 4, 4], [3, 3]]
    sent.clear()
    asyncio.run(backend.run([np.zeros((20, 1, 224, 224), np.float32)]))
    assert sent == [8, 8, 4]  # never over Triton's max_batch_size
