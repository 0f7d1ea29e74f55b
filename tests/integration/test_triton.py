"""The triton backend against a real `tritonserver`: Medserve serves cxr-triage and
lung-nodule-ct through the Triton that `medserve serve` embeds (built from the repository,
Python backend), and must answer as the torch backend does with the same weights; a Triton
that is down or hung gives a quick 503 with Retry-After, and service comes back with it."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml

from serving.testing.process import ServerProcess, running_server
from serving.testing.samples import make_ct_series, make_radiograph, zip_series
from serving.triton.build import copy_with_backend
from tests.conftest import MODEL_REPO, ROOT, TEST_LIMITS, Server

DICOM = {"Content-Type": "application/dicom"}
TIMEOUT_S = 3.0  # the test manifests' triton.timeout_s: a hung Triton costs this long
FAST_S = TIMEOUT_S + 2.0  # what "answers quickly" means here, with a noisy machine's slack


@pytest.fixture(scope="module")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("medserve-triton")
    repo = copy_with_backend(MODEL_REPO, tmp / "model_repo", ["cxr-triage", "lung-nodule-ct"],
                             triton={"timeout_s": TIMEOUT_S})
    config = tmp / "medserve.yaml"
    config.write_text(yaml.safe_dump({"limits": TEST_LIMITS, "ray": {"num_cpus": 8}}))
    with running_server("--repo", str(repo), "--config", str(config),
                        log=tmp / "server.log", cwd=ROOT) as srv:
        yield srv


def triton_pid(server: ServerProcess) -> int:
    """The embedded tritonserver's pid, from the line `medserve serve` prints (the last one:
    it is restarted after a crash)."""
    pids = re.findall(r"Triton (?:ready|restarted) on \S+ \(pid (\d+)\)", server.log.read_text())
    assert pids, "medserve did not report its Triton"
    return int(pids[-1])


def predict(server: Server, model: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/imaging/{model}/predict", timeout=120, **kwargs)


def wait_for(check, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.5)  # polling interval


def test_oip_infer_matches_torch_backend(triton_server: ServerProcess, server: Server) -> None:
    x = np.random.default_rng(7).standard_normal((3, 1, 224, 224)).astype(np.float32)

    def infer(srv: Server) -> np.ndarray:
        client = httpclient.InferenceServerClient(srv.host_port, network_timeout=120)
        inp = httpclient.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer("cxr-triage", [inp]).as_numpy("probabilities")

    got, want = infer(triton_server), infer(server)
    assert got.shape == (3, 14)
    np.testing.assert_allclose(got, want, atol=1e-4)
    meta = httpx.get(f"{triton_server.url}/v2/models/cxr-triage", timeout=30).json()
    assert meta["platform"] == "triton"


def test_radiograph_predict_matches_torch_backend(
    triton_server: ServerProcess, server: Server
) -> None:
    dcm = make_radiograph(modality="DX", seed=21)
    got, want = (predict(s, "cxr-triage", content=dcm, headers=DICOM) for s in (triton_server,
                                                                                server))
    assert got.status_code == 200, got.text
    body = got.json()
    assert (body["model"], body["version"]) == ("cxr-triage", "1")
    assert body["intended_use"] == want.json()["intended_use"]
    expected = {f["label"]: f["probability"] for f in want.json()["findings"]}
    for finding in body["findings"]:
        assert finding["probability"] == pytest.approx(expected[finding["label"]], abs=1e-4)
    assert body["timings_ms"]["inference"] > 0


def test_ct_sliding_window_through_triton_matches_torch_backend(
    triton_server: ServerProcess, server: Server
) -> None:
    body = zip_series(make_ct_series(seed=5))
    got, want = (predict(s, "lung-nodule-ct", content=body,
                         headers={"Content-Type": "application/zip"})
                 for s in (triton_server, server))
    assert got.status_code == 200, got.text
    found, expected = got.json()["findings"], want.json()["findings"]
    assert len(found) == len(expected)
    for g, e in zip(found, expected, strict=True):
        np.testing.assert_allclose(g["centre_mm"], e["centre_mm"], atol=1e-3)
        assert g["score"] == pytest.approx(e["score"], abs=1e-4)


def _assert_quick_503(server: ServerProcess) -> None:
    start = time.monotonic()
    r = predict(server, "cxr-triage", content=make_radiograph(), headers=DICOM)
    assert r.status_code == 503, r.text
    assert time.monotonic() - start < FAST_S
    assert int(r.headers["retry-after"]) >= 1
    assert "inference server is unavailable" in r.json()["error"]


def test_hung_triton_gives_503_within_the_timeout(triton_server: ServerProcess) -> None:
    pid = triton_pid(triton_server)
    os.kill(pid, signal.SIGSTOP)
    try:
        _assert_quick_503(triton_server)
        start = time.monotonic()
        ready = httpx.get(f"{triton_server.url}/v2/models/cxr-triage/ready", timeout=30)
        assert ready.status_code == 503 and time.monotonic() - start < FAST_S
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: predict(triton_server, "cxr-triage", content=make_radiograph(),
                             headers=DICOM).status_code == 200)


def test_triton_down_gives_503_then_service_comes_back(triton_server: ServerProcess) -> None:
    pid = triton_pid(triton_server)
    os.kill(pid, signal.SIGKILL)  # a crash: medserve's watcher restarts it on the same ports
    _assert_quick_503(triton_server)
    ready = httpx.get(f"{triton_server.url}/v2/health/ready", timeout=30)
    assert ready.status_code == 503 and "retry-after" in ready.headers
    wait_for(lambda: triton_pid(triton_server) != pid)
    wait_for(lambda: httpx.get(f"{triton_server.url}/v2/health/ready",
                               timeout=30).status_code == 200)
    # Ready again: requests flow (their channel reconnects within its capped backoff).
    r = predict(triton_server, "cxr-triage", content=make_radiograph(), headers=DICOM)
    assert r.status_code == 200, r.text


def test_stopping_medserve_stops_its_triton(triton_server: ServerProcess) -> None:
    """Last in this module: it stops the module's server (as Ctrl-C or `kill` would)."""
    pid = triton_pid(triton_server)
    os.kill(triton_server.pid, signal.SIGTERM)
    triton_server.proc.wait(timeout=120)
    with pytest.raises(ProcessLookupError):  # gone before medserve exited, not by killpg
        os.kill(pid, 0)
