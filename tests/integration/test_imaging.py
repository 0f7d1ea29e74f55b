"""`POST /v1/imaging/{model}/predict` with DICOM, PNG and CT series, against a real Medserve."""

from __future__ import annotations

import asyncio
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from serving.backends.torch_backend import TorchBackend
from serving.imaging.pipeline import Payload, make_pipeline
from serving.repository.store import load_repository
from serving.testing.samples import make_ct_series, make_png, make_radiograph, zip_series
from serving.topology.applications import JEMALLOC
from tests.conftest import MODEL_REPO, TEST_LIMITS, Server
from tests.integration.harness import binary_infer, metric_total
from tests.prom import eventually

DICOM = {"Content-Type": "application/dicom"}
MR_SMALL = Path(get_testdata_file("MR_small.dcm")).read_bytes()


def _without_pixels() -> bytes:
    ds = dcmread(BytesIO(make_radiograph()))
    del ds.PixelData
    out = BytesIO()
    ds.save_as(out)
    return out.getvalue()


NO_PIXELS = _without_pixels()


def predict(server: Server, model: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/imaging/{model}/predict", timeout=120, **kwargs)


def expected(model: str, payload: Payload) -> tuple[list[dict], str]:
    """Decode, preprocess and run the same weights in-process: what the server must answer."""
    repo = load_repository(MODEL_REPO)
    m = repo.manifest(model)
    v = m.version(m.served_version)
    pipeline = make_pipeline(m)
    x, context = pipeline.prepare(payload)
    backend = TorchBackend(m, v, repo.verify(m.name, v), "cpu")
    y = asyncio.run(backend.run([x]))[0]
    return pipeline.findings(y, context), m.intended_use


def test_dicom_radiograph_prediction_matches_in_process_pipeline(server: Server) -> None:
    dcm = make_radiograph(modality="DX", seed=11)
    r = predict(server, "cxr-triage", content=dcm, headers=DICOM)
    assert r.status_code == 200, r.text
    body = r.json()
    want, intended_use = expected("cxr-triage", Payload("application/dicom", [dcm]))
    assert body["model"] == "cxr-triage" and body["version"] == "1"
    assert body["task"] == "classification"
    assert body["intended_use"] == intended_use
    assert "clinician" in body["decision_support"]
    assert body["request_id"] == r.headers["x-request-id"]
    got = {f["label"]: f["probability"] for f in body["findings"]}
    assert set(got) == {f["label"] for f in want} and len(got) == 14
    for f in want:
        assert got[f["label"]] == pytest.approx(f["probability"], abs=1e-4)
    probs = [f["probability"] for f in body["findings"]]
    assert probs == sorted(probs, reverse=True)
    timings = body["timings_ms"]
    assert {"queue", "preprocess", "inference", "postprocess", "total"} <= set(timings)
    assert timings["total"] >= timings["inference"] > 0


def test_monochrome1_and_png_are_accepted(server: Server) -> None:
    mono1 = predict(server, "cxr-triage", content=make_radiograph(photometric="MONOCHROME1"),
                    headers=DICOM)
    assert mono1.status_code == 200, mono1.text
    png = predict(server, "cxr-triage", content=make_png(), headers={"Content-Type": "image/png"})
    assert png.status_code == 200, png.text
    assert len(png.json()["findings"]) == 14


@pytest.mark.parametrize("container", ["zip", "multipart"])
def test_ct_series_detection(server: Server, container: str) -> None:
    parts = make_ct_series(seed=5)
    if container == "zip":
        r = predict(server, "lung-nodule-ct", content=zip_series(parts),
                    headers={"Content-Type": "application/zip"})
    else:
        files = [("files", (f"{i}.dcm", p, "application/dicom")) for i, p in enumerate(parts)]
        r = predict(server, "lung-nodule-ct", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    want, _ = expected("lung-nodule-ct", Payload("application/zip", parts))
    assert body["task"] == "detection"
    assert len(body["findings"]) == len(want)
    for got, exp in zip(body["findings"], want, strict=True):
        assert got["label"] == "nodule"
        np.testing.assert_allclose(got["centre_mm"], exp["centre_mm"], atol=1e-3)
        assert got["score"] == pytest.approx(exp["score"], abs=1e-4)
        assert got["diameter_mm"] > 0


@pytest.mark.parametrize(
    ("model", "content", "ctype", "status", "needle"),
    [
        ("cxr-triage", b"this is not dicom", "application/dicom", 400, "DICOM"),
        ("cxr-triage", make_radiograph()[:3000], "application/dicom", 400, ""),
        ("cxr-triage", MR_SMALL,
         "application/dicom", 422, "CR, DX"),
        ("cxr-triage", NO_PIXELS,
         "application/dicom", 400, ""),
        ("cxr-triage", b"\x89PNG\r\n\x1a\nbroken", "image/png", 400, ""),
        ("cxr-triage", make_png(), "application/octet-stream", 415, "application/dicom"),
        ("lung-nodule-ct", make_radiograph(), "application/dicom", 415, "application/zip"),
        ("lung-nodule-ct", zip_series([make_radiograph()] * 3), "application/zip", 422, "CT"),
        ("lung-nodule-ct", b"PK\x03\x04 not a zip", "application/zip", 400, "zip"),
        ("no-such-model", make_png(), "image/png", 404, "cxr-triage, lung-nodule-ct"),
    ],
    ids=["not-dicom", "truncated", "wrong-modality", "no-pixels", "bad-png", "wrong-type",
         "instance-to-volume-model", "dx-series-to-ct", "bad-zip", "unknown-model"],
)
def test_bad_input_gets_clear_4xx(server, model, content, ctype, status, needle) -> None:
    r = predict(server, model, content=content, headers={"Content-Type": ctype})
    assert r.status_code == status, r.text
    message = r.json()["error"]
    assert isinstance(message, str) and needle in message


# pydicom's own malformed files, as they are: truncated, a bad VR, no or a broken Part 10
# header, empty values. Each is refused by what is wrong with it for a radiograph model:
# its modality (422, checked first) or an unreadable file (400).
MALFORMED = {
    "MR_truncated.dcm": 422, "badVR.dcm": 422, "empty_charset_LEI.dcm": 422,
    "meta_missing_tsyntax.dcm": 400, "no_meta.dcm": 400, "no_meta_group_length.dcm": 422,
    "reportsi_with_empty_number_tags.dcm": 422, "rtplan_truncated.dcm": 422,
}


@pytest.mark.parametrize(("name", "status"), sorted(MALFORMED.items()))
def test_pydicom_malformed_files_get_a_clear_4xx(server: Server, name: str, status: int) -> None:
    data = Path(get_testdata_file(name)).read_bytes()
    r = predict(server, "cxr-triage", content=data, headers=DICOM)
    assert r.status_code == status, r.text
    assert ("accepted modalities: CR, DX" if status == 422 else "DICOM") in r.json()["error"]


def test_concurrent_requests_share_batches(server: Server) -> None:
    """Radiographs sent at once: the replica's `@serve.batch` runs them in fewer forward
    passes than requests (the batch-size histogram counts one sample per batch). Arrival is up
    to the machine's scheduler (a burst can trickle in one pass apart on a loaded CI node), so
    up to three bursts are sent; a replica that never batches runs every one request by request."""
    body, headers = binary_infer("image", np.zeros((1, 1, 224, 224), np.float32))
    labels = {"model": "cxr-triage"}
    manifest = load_repository(MODEL_REPO).manifest("cxr-triage")
    burst_size = manifest.scaling.max_ongoing_requests  # all reach the replica together

    def counts() -> tuple[float, float]:
        return (metric_total(server, "medserve_queue_wait_seconds_count", **labels),
                metric_total(server, "medserve_batch_size_count", **labels))

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            replies = await asyncio.gather(*(
                client.post("/v2/models/cxr-triage/infer", content=body, headers=headers)
                for _ in range(burst_size)))
        return [r.status_code for r in replies]

    runs = []
    for _ in range(3):
        requests_before, batches_before = counts()
        assert asyncio.run(burst()) == [200] * burst_size

        def settled(before: float = requests_before) -> tuple[float, float]:
            got = counts()
            assert got[0] == before + burst_size, got  # every request reached a batch once
            return got

        runs.append(eventually(settled)[1] - batches_before)
        if runs[-1] < burst_size:
            break
    print(f"\n{burst_size} concurrent requests ran in {runs} batches")
    assert burst_size / manifest.batching.max_batch_size <= runs[-1] < burst_size, runs


def test_oversized_body_is_413(server: Server) -> None:
    r = predict(server, "cxr-triage", content=b"\0" * (TEST_LIMITS["max_instance_bytes"] + 1),
                headers=DICOM)
    assert r.status_code == 413


def test_server_keeps_serving_after_bad_input_and_docs_are_served(server: Server) -> None:
    for _ in range(3):
        predict(server, "cxr-triage", content=b"junk", headers=DICOM)
    ok = predict(server, "cxr-triage", content=make_radiograph(), headers=DICOM)
    assert ok.status_code == 200
    assert httpx.get(f"{server.url}/docs", timeout=30).status_code == 200
    spec = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    assert "/v1/imaging/{model}/predict" in spec["paths"]
    assert "/v2/models/{model}/infer" in spec["paths"]


def test_every_replica_allocates_with_jemalloc_where_it_is_installed(server: Server) -> None:
    """`ray.allocator: jemalloc` (the default) reaches every worker of every application."""
    pids = [pid for pid, title in server.session_processes()
            if title.startswith("ray::ServeReplica:")]
    assert len(pids) >= 4  # the gateway, two imaging models, the LLM
    for pid in pids:
        mapped = "libjemalloc" in Path(f"/proc/{pid}/maps").read_text()
        assert mapped == Path(JEMALLOC).exists(), pid
