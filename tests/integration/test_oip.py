"""Open Inference Protocol v2 through the official tritonclient, against a real Medserve."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serving.repository.networks import load_network
from serving.repository.store import load_repository
from tests.conftest import MODEL_REPO, Server


@pytest.fixture(scope="module")
def client(server: Server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.host_port, network_timeout=120)


@pytest.fixture(scope="module")
def reference_cxr():
    """The same network and weights, run in this process, as the ground truth."""
    repo = load_repository(MODEL_REPO)
    m = repo.manifest("cxr-triage")
    v = m.version(m.served_version)
    net = load_network(m.architecture, v.weights, repo.verify(m.name, v), "cpu")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(x)).numpy()

    return run


def test_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("cxr-triage")
    assert client.is_model_ready("cxr-triage", "1")
    assert not client.is_model_ready("no-such-model")
    server = client.get_server_metadata()
    assert server["name"] == "medserve"
    assert "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("cxr-triage")
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 224, 224]}]
    assert meta["outputs"][0]["name"] == "probabilities"
    assert "1" in meta["versions"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_in_process_model(client, reference_cxr, binary: bool) -> None:
    x = np.random.default_rng(7).standard_normal((3, 1, 224, 224)).astype(np.float32)
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer("cxr-triage", [inp], outputs=[out], request_id="abc-1")
    probs = result.as_numpy("probabilities")
    assert probs.shape == (3, 14)
    assert result.get_response()["model_version"] == "1"
    assert result.get_response()["id"] == "abc-1"
    np.testing.assert_allclose(probs, reference_cxr(x), atol=1e-4)


def test_infer_with_version_pin_and_default_outputs(client, reference_cxr) -> None:
    x = np.zeros((1, 1, 224, 224), np.float32)
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("cxr-triage", [inp], model_version="1")
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference_cxr(x), atol=1e-4)


@pytest.mark.parametrize(
    ("shape", "dtype", "datatype", "needle"),
    [
        ((1, 3, 224, 224), np.float32, "FP32", "expected shape"),
        ((1, 1, 224, 224), np.float64, "FP64", "datatype"),
        ((1, 224, 224), np.float32, "FP32", "shape"),
    ],
)
def test_infer_rejects_wrong_tensors_with_400(client, shape, dtype, datatype, needle) -> None:
    inp = httpclient.InferInput("image", list(shape), datatype)
    inp.set_data_from_numpy(np.zeros(shape, dtype))
    with pytest.raises(InferenceServerException) as info:
        client.infer("cxr-triage", [inp])
    assert info.value.status() == "400"
    assert needle in info.value.message()


def test_infer_unknown_model_is_404(client) -> None:
    inp = httpclient.InferInput("image", [1, 1, 224, 224], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 1, 224, 224), np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("no-such-model", [inp])
    assert info.value.status() == "404"


def test_infer_malformed_bodies(server: Server) -> None:
    url = f"{server.url}/v2/models/cxr-triage/infer"
    bad_json = httpx.post(url, content=b"{not json", timeout=30)
    assert bad_json.status_code == 400 and "error" in bad_json.json()
    short = json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 224, 224],
                                    "datatype": "FP32", "data": [0.0] * 10}]})
    count = httpx.post(url, content=short, timeout=30)
    assert count.status_code == 400
    header = httpx.post(url, content=b"{}", headers={"Inference-Header-Content-Length": "99"},
                        timeout=30)
    assert header.status_code == 400
    too_big = httpx.post(url, content=b"0" * (17 << 20), timeout=60)
    assert too_big.status_code == 413


def test_ct_volume_infer(client) -> None:
    x = np.random.default_rng(3).random((1, 1, 40, 40, 24), dtype=np.float32)
    inp = httpclient.InferInput("volume", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    heat = client.infer("lung-nodule-ct", [inp]).as_numpy("heatmap")
    assert heat.shape == (1, 2, 40, 40, 24)
    assert heat[:, 0].min() >= 0.0 and heat[:, 0].max() <= 1.0
    assert (heat[:, 1] > 0).all()  # diameters are positive millimetres


def test_model_config_extension(client) -> None:
    config = client.get_model_config("cxr-triage")
    assert config["max_batch_size"] == 8
    assert config["input"] == [{"name": "image", "data_type": "TYPE_FP32", "dims": [1, 224, 224]}]
    ct = client.get_model_config("lung-nodule-ct")
    assert ct["max_batch_size"] == 0 and ct["input"][0]["dims"] == [1, 1, -1, -1, -1]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(client, reference_cxr, algorithm: str) -> None:
    x = np.random.default_rng(9).standard_normal((1, 1, 224, 224)).astype(np.float32)
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("cxr-triage", [inp], request_compression_algorithm=algorithm)
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference_cxr(x), atol=1e-4)


def test_unknown_content_encoding_is_415(server: Server) -> None:
    r = httpx.post(f"{server.url}/v2/models/cxr-triage/infer", content=b"{}",
                   headers={"Content-Encoding": "br"}, timeout=30)
    assert r.status_code == 415
