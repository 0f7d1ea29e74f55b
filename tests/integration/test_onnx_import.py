"""Imported models served by a real Medserve: a vendor's ONNX export answers the imaging
predict and OIP infer routes as the torch-served cxr-triage does with the same weights, and
describes itself from the graph; a MONAI segmentation bundle answers with per-label volumes,
and as a DICOM SEG."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml

from serving.repository.store import load_repository
from serving.testing.process import ServerProcess, running_server
from serving.testing.samples import make_ct_series, make_radiograph, zip_series
from serving.triton.onnx_export import export_onnx
from tests.conftest import MODEL_REPO, ROOT, TEST_LIMITS, Server
from tests.unit.test_monai_bundle import make_seg_bundle

NAME = "vendor-cxr"
SEG = "dense-ct"
INTENDED = "Decision support for readers of adult chest radiographs; the clinician decides."


def medserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "serving.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def onnx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("medserve-onnx")
    shipped = load_repository(MODEL_REPO)
    cxr = shipped.manifest("cxr-triage")
    version = cxr.version(cxr.served_version)
    exported = tmp / "vendor.onnx"
    export_onnx(cxr, version, shipped.verify("cxr-triage", version), exported)
    repo = tmp / "model_repo"
    repo.mkdir()
    done = medserve("models", "import", str(exported), "--name", NAME, "--repo", str(repo),
                    "--intended-use", INTENDED, "--labels", ",".join(cxr.labels))
    assert done.returncode == 0, done.stdout + done.stderr
    bundle = make_seg_bundle(tmp / "dense_bundle")
    done = medserve("models", "import", str(bundle), "--name", SEG, "--repo", str(repo))
    assert done.returncode == 0, done.stdout + done.stderr
    config = tmp / "medserve.yaml"
    config.write_text(yaml.safe_dump({"limits": TEST_LIMITS, "ray": {"num_cpus": 4}}))
    with running_server("--repo", str(repo), "--config", str(config), log=tmp / "server.log",
                        cwd=ROOT) as srv:
        yield srv


def test_predict_matches_the_torch_served_model(onnx_server: ServerProcess,
                                                server: Server) -> None:
    dcm = make_radiograph(modality="DX", seed=33)
    headers = {"Content-Type": "application/dicom"}
    got = httpx.post(f"{onnx_server.url}/v1/imaging/{NAME}/predict", content=dcm,
                     headers=headers, timeout=120)
    want = httpx.post(f"{server.url}/v1/imaging/cxr-triage/predict", content=dcm,
                      headers=headers, timeout=120)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["model"] == NAME and body["version"] == "1"
    assert body["intended_use"] == INTENDED
    probabilities = {f["label"]: f["probability"] for f in body["findings"]}
    expected = {f["label"]: f["probability"] for f in want.json()["findings"]}
    assert probabilities.keys() == expected.keys()
    for label, p in expected.items():
        assert abs(probabilities[label] - p) < 1e-3, label


def test_oip_infer_and_metadata_come_from_the_graph(onnx_server: ServerProcess,
                                                    server: Server) -> None:
    meta = httpx.get(f"{onnx_server.url}/v2/models/{NAME}", timeout=30).json()
    assert meta["platform"] == "onnxruntime"
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 224, 224]}]
    x = np.random.default_rng(5).standard_normal((3, 1, 224, 224)).astype(np.float32)

    def infer(srv: Server, model: str) -> np.ndarray:
        client = httpclient.InferenceServerClient(srv.host_port, network_timeout=120)
        inp = httpclient.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer(model, [inp]).as_numpy("probabilities")

    got = infer(onnx_server, NAME)
    assert got.shape == (3, 14)
    np.testing.assert_allclose(got, infer(server, "cxr-triage"), atol=1e-4)


def test_a_segmentation_bundle_answers_volumes_and_a_dicom_seg(onnx_server: ServerProcess
                                                               ) -> None:
    from io import BytesIO

    import highdicom as hd
    from pydicom import dcmread

    body = zip_series(make_ct_series(seed=61, slices=16, rows=48, cols=48))
    url = f"{onnx_server.url}/v1/imaging/{SEG}/predict"
    zipped = {"Content-Type": "application/zip"}
    as_json = httpx.post(url, content=body, headers=zipped, timeout=120)
    assert as_json.status_code == 200, as_json.text
    (dense,) = as_json.json()["findings"]
    assert dense["label"] == "dense" and dense["voxels"] > 0 and dense["volume_ml"] > 0
    as_seg = httpx.post(url, content=body, headers={**zipped, "Accept": "application/dicom"},
                        timeout=120)
    assert as_seg.status_code == 200, as_seg.text
    seg = hd.seg.Segmentation.from_dataset(dcmread(BytesIO(as_seg.content)))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["dense"]
    assert seg.NumberOfFrames == 16  # one frame per source slice
    wrong = httpx.post(url, content=body, headers=zipped, params={"format": "dicom-sr"},
                       timeout=120)
    assert wrong.status_code == 406 and "dicom-seg" in wrong.json()["error"]
