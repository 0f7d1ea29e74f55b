"""Study analysis with a real PACS: Orthanc (Debian's, with its DICOMweb plugin) holds the
studies; `POST /v1/studies/{uid}/analyze` pulls them (WADO-RS), runs the models and stores the
DICOM SR back (STOW-RS); the SR is then found in Orthanc by QIDO-RS and read with highdicom.

The shared server's `pacs:` is the session's Orthanc (tests/conftest.py). One radiograph is
a real NEMA chest CR (pydicom-data, JPEG 2000), the CT series is synthetic with a nodule.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from serving.net import free_port
from serving.testing.orthanc import OrthancProcess, start_orthanc
from serving.testing.samples import make_ct_series, make_radiograph, zip_series
from tests.conftest import Server
from tests.orthanc import require, require_installed
from tests.prom import eventually

NEMA_CHEST = Path(get_testdata_file("RG1_J2KI.dcm")).read_bytes()  # CR, chest PA


@pytest.fixture(scope="module")
def orthanc(pacs: OrthancProcess | None) -> OrthancProcess:
    return require(pacs)


def _client(orthanc: OrthancProcess) -> DICOMwebClient:
    session = requests.Session()
    session.auth = orthanc.auth
    return DICOMwebClient(orthanc.dicomweb_url, session=session)


def _store(orthanc: OrthancProcess, parts: list[bytes]) -> Dataset:
    datasets = [dcmread(BytesIO(p)) for p in parts]
    _client(orthanc).store_instances(datasets)
    return datasets[0]


def _analyze(server: Server, study: str, **kw) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/studies/{study}/analyze", timeout=60, **kw)


def _job(server: Server, url: str) -> dict:
    """The job now; a gateway that is restarting counts as 'not yet'."""
    try:
        r = httpx.get(server.url + url, timeout=10)
    except httpx.HTTPError as exc:
        raise AssertionError(f"gateway unreachable: {exc}") from None
    assert r.status_code == 200, r.text
    return r.json()


def _wait(server: Server, url: str, timeout_s: float = 180) -> dict:
    def finished() -> dict:
        job = _job(server, url)
        assert job["status"] in ("done", "failed"), job
        return job
    return eventually(finished, timeout_s=timeout_s, every_s=0.2)


def _srs(orthanc: OrthancProcess, study: str) -> list[dict]:
    """The study's SR instances in the PACS, by QIDO-RS."""
    return _client(orthanc).search_for_instances(study, search_filters={"Modality": "SR"})


def _predict(server: Server, model: str, content: bytes, ctype: str) -> list[dict]:
    r = httpx.post(f"{server.url}/v1/imaging/{model}/predict", content=content,
                   headers={"Content-Type": ctype}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["findings"]


def _retrieve_sr(orthanc: OrthancProcess, study: str, result: dict) -> Dataset:
    """The job's SR, by WADO-RS, found by QIDO-RS among the study's SR instances."""
    (found,) = [i for i in _srs(orthanc, study)
                if i["00080018"]["Value"][0] == result["sop_instance_uid"]]
    return _client(orthanc).retrieve_instance(study, found["0020000E"]["Value"][0],
                                              result["sop_instance_uid"])


def test_a_ct_study_round_trip_stores_an_sr_equal_to_the_json_result(
    server: Server, orthanc: OrthancProcess,
) -> None:
    parts = make_ct_series(seed=21)
    source = _store(orthanc, parts)
    study = source.StudyInstanceUID
    start = time.perf_counter()
    r = _analyze(server, study)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    assert r.json()["status"] in ("queued", "running")
    job = _wait(server, r.headers["location"])
    elapsed = time.perf_counter() - start
    print(f"\nCT series ({len(parts)} slices) round trip: {elapsed:.2f} s")
    assert job["status"] == "done", job
    (result,) = job["results"]
    assert result["model"] == "lung-nodule-ct" and result["version"] == "1"
    assert result["series_instance_uid"] == source.SeriesInstanceUID

    (found,) = _srs(orthanc, study)  # QIDO-RS finds it in the PACS
    assert found["00080018"]["Value"][0] == result["sop_instance_uid"]
    sr = _retrieve_sr(orthanc, study, result)
    assert sr.PatientID == source.PatientID and sr.StudyInstanceUID == study
    texts = {str(e.value) for e in sr.iterall() if e.keyword == "TextValue"}
    assert "lung-nodule-ct" in texts and any(t.startswith("Intended use:") for t in texts)
    groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content \
        .get_planar_roi_measurement_groups()
    want = _predict(server, "lung-nodule-ct", zip_series(parts), "application/zip")
    assert want and len(groups) == len(want) == result["findings"]
    for group, finding in zip(groups, want, strict=True):
        np.testing.assert_allclose(group.roi.value[0], finding["centre_mm"], atol=1e-4)
        (diameter,) = group.get_measurements(name=codes.SCT.Diameter)
        assert float(diameter.value) == pytest.approx(finding["diameter_mm"], abs=1e-4)

    # Again: the same model version on the same series is the same SR, stored once.
    again = _wait(server, _analyze(server, study).headers["location"])
    assert again["results"][0]["sop_instance_uid"] == result["sop_instance_uid"]
    assert len(_srs(orthanc, study)) == 1


def test_a_real_chest_radiograph_round_trip(server: Server, orthanc: OrthancProcess) -> None:
    source = _store(orthanc, [NEMA_CHEST])
    start = time.perf_counter()
    r = _analyze(server, source.StudyInstanceUID, json={"models": ["cxr-triage"]})
    assert r.status_code == 202, r.text
    job = _wait(server, r.headers["location"])
    print(f"\nradiograph round trip: {time.perf_counter() - start:.2f} s")
    assert job["status"] == "done", job
    (result,) = job["results"]
    assert result["model"] == "cxr-triage" and result["findings"] == 14
    sr = _retrieve_sr(orthanc, source.StudyInstanceUID, result)
    report = hd.sr.ComprehensiveSR.from_dataset(sr).content
    got = {}
    for group in report.get_image_measurement_groups():
        (probability,) = group.get_measurements(name=codes.DCM.Probability)
        label = group.finding_type.value  # the local code's value is the label
        got[label] = float(probability.value)
    want = _predict(server, "cxr-triage", NEMA_CHEST, "application/dicom")
    for finding in want:
        coded = {"Effusion": "60046008", "Mass": "4147007", "Nodule": "27925004",
                 "Pneumothorax": "36118008", "Edema": "19242006", "Fibrosis": "112674009"}
        key = coded.get(finding["label"], finding["label"])
        assert got[key] == pytest.approx(finding["probability"], abs=1e-5), finding["label"]


def test_only_the_series_a_model_takes_are_analysed(server: Server,
                                                    orthanc: OrthancProcess) -> None:
    """An extremity radiograph in the study is not sent to the chest model; a study with
    nothing a model takes fails with the reason."""
    extremity = Path(get_testdata_file("RG3_J2KI.dcm")).read_bytes()  # CR, tibia
    source = _store(orthanc, [extremity])
    job = _wait(server, _analyze(server, source.StudyInstanceUID).headers["location"])
    assert job["status"] == "failed"
    assert "modality and body part" in job["reason"]
    assert _srs(orthanc, source.StudyInstanceUID) == []


def test_analyze_refuses_what_it_cannot_do(server: Server, orthanc: OrthancProcess) -> None:
    missing = _analyze(server, "1.2.826.0.1.3680043.8.498.999999")
    assert missing.status_code == 404 and "no such study" in missing.json()["error"]
    bad = _analyze(server, "not-a-uid")
    assert bad.status_code == 400 and "DICOM UID" in bad.json()["error"]
    study = _store(orthanc, [make_radiograph(seed=33)]).StudyInstanceUID
    unknown = _analyze(server, study, json={"models": ["no-such-model"]})
    assert unknown.status_code == 404 and "cxr-triage" in unknown.json()["error"]
    assert httpx.get(f"{server.url}/v1/jobs/0123abc", timeout=10).status_code == 404


def test_a_pacs_that_is_down_is_a_503_with_retry_after(
    server: Server, orthanc: OrthancProcess, tmp_path: Path,
) -> None:
    study = _store(orthanc, [make_radiograph(seed=34)]).StudyInstanceUID
    orthanc.stop()
    try:
        start = time.perf_counter()
        r = _analyze(server, study)
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert "PACS" in r.json()["error"]
        assert time.perf_counter() - start < 10  # two tries with back-off, nothing hangs
    finally:
        again = start_orthanc(Path(orthanc.log).parent, port=orthanc.port)
        orthanc.proc = again.proc
    assert _analyze(server, study).status_code == 202


def _stow_client(server: Server, seen: list[requests.Response]) -> DICOMwebClient:
    """dicomweb-client pointed at Medserve, as a modality or router would be; a response hook
    keeps the replies' headers (the job is the Content-Location)."""
    session = requests.Session()
    session.hooks["response"].append(lambda r, *a, **k: seen.append(r))
    return DICOMwebClient(f"{server.url}/dicomweb", session=session)


def test_a_study_sent_over_stow_rs_is_analysed_into_the_pacs(
    server: Server, orthanc: OrthancProcess,
) -> None:
    parts = make_ct_series(seed=23)
    datasets = [dcmread(BytesIO(p)) for p in parts]
    seen: list[requests.Response] = []
    start = time.perf_counter()
    reply = _stow_client(server, seen).store_instances(datasets)
    stored = {item.ReferencedSOPInstanceUID for item in reply.ReferencedSOPSequence}
    assert stored == {ds.SOPInstanceUID for ds in datasets}
    job = _wait(server, seen[-1].headers["content-location"])
    print(f"\nCT series over STOW-RS to SR in the PACS: {time.perf_counter() - start:.2f} s")
    assert job["status"] == "done" and job["source"] == "stow", job
    (result,) = job["results"]
    assert result["model"] == "lung-nodule-ct"
    (found,) = _srs(orthanc, datasets[0].StudyInstanceUID)
    assert found["00080018"]["Value"][0] == result["sop_instance_uid"]


def _stow(server: Server, body: bytes, ctype: str, study: str | None = None) -> httpx.Response:
    url = f"{server.url}/dicomweb/studies" + (f"/{study}" if study else "")
    return httpx.post(url, content=body, headers={"Content-Type": ctype}, timeout=60)


def _related(parts: list[bytes], boundary: str = "medserve-test") -> tuple[bytes, str]:
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                    + p + b"\r\n" for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_stow_rs_refuses_what_it_cannot_take(server: Server) -> None:
    series = make_ct_series(seed=24, slices=4)
    body, ctype = _related(series)
    # broken multipart: cut in the middle of a part, or no boundary parameter
    cut = _stow(server, body[: len(body) // 2], ctype)
    assert cut.status_code == 400 and "multipart" in cut.json()["error"]
    assert _stow(server, body, 'multipart/related; type="application/dicom"').status_code == 400
    assert _stow(server, body, "application/dicom").status_code == 415
    # a part that is not DICOM
    junk, junk_type = _related([series[0], b"not dicom at all"])
    bad = _stow(server, junk, junk_type)
    assert bad.status_code == 400 and "part 1" in bad.json()["error"]
    # a series mixing studies
    other = dcmread(BytesIO(series[1]))
    other.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.4242"
    out = BytesIO()
    other.save_as(out, enforce_file_format=True)
    mixed, mixed_type = _related([series[0], out.getvalue()])
    assert _stow(server, mixed, mixed_type).status_code == 400
    # the study in the URL is not the instances'
    wrong = _stow(server, body, ctype, study="1.2.826.0.1.3680043.8.498.4243")
    assert wrong.status_code == 400 and "one study" in wrong.json()["error"]
    # nothing any model takes (an extremity radiograph)
    leg, leg_type = _related([Path(get_testdata_file("RG3_J2KI.dcm")).read_bytes()])
    none = _stow(server, leg, leg_type)
    assert none.status_code == 422 and "body part" in none.json()["error"]


def test_medserve_pacs_runs_a_local_orthanc_with_the_samples(tmp_path: Path) -> None:
    """The README's quick start: `medserve pacs --load samples` stores the sample studies,
    prints the `pacs:` settings, and stops Orthanc on Ctrl-C."""
    require_installed()
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "cxr.dcm").write_bytes(make_radiograph(seed=51))
    (samples / "ct.zip").write_bytes(zip_series(make_ct_series(seed=52, slices=4)))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "pacs", "--port", str(port), "--dir",
         str(tmp_path / "data"), "--load", str(samples)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("ready"):
                break
        text = "".join(lines)
        assert f"url: http://127.0.0.1:{port}/dicom-web" in text, text
        assert text.count("stored study") == 2
        studies = httpx.get(f"http://127.0.0.1:{port}/dicom-web/studies",
                            auth=("medserve", "medserve-test-only"), timeout=10).json()
        assert len(studies) == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/system", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
