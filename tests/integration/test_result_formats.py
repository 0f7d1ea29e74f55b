"""Predict with `Accept: application/dicom` or `application/fhir+json`, against a real Medserve.

The SR a client receives is read back with highdicom's TID 1500 reader and its measurements
must equal the JSON result for the same study; the FHIR report is validated by fhir.resources.
One radiograph is a real NEMA CR image (pydicom-data, JPEG 2000 lossless).
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes

from serving.testing.samples import make_ct_series, make_png, zip_series
from tests.conftest import Server

NEMA_CR = Path(get_testdata_file("RG3_J2KR.dcm")).read_bytes()
DICOM_BODY = {"Content-Type": "application/dicom"}
ZIP_BODY = {"Content-Type": "application/zip"}


def predict(server: Server, model: str, content: bytes, headers: dict[str, str],
            params: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/imaging/{model}/predict", content=content,
                      headers=headers, params=params, timeout=120)


def test_a_real_radiograph_as_sr_matches_its_json_result(server: Server) -> None:
    as_json = predict(server, "cxr-triage", NEMA_CR, DICOM_BODY)
    as_sr = predict(server, "cxr-triage", NEMA_CR, {**DICOM_BODY, "Accept": "application/dicom"})
    assert as_json.status_code == 200 and as_sr.status_code == 200, as_sr.text
    assert as_sr.headers["content-type"] == "application/dicom"
    sr = dcmread(BytesIO(as_sr.content))
    source = dcmread(BytesIO(NEMA_CR), stop_before_pixels=True)
    assert sr.PatientID == source.PatientID and sr.StudyInstanceUID == source.StudyInstanceUID
    report = hd.sr.ComprehensiveSR.from_dataset(sr).content
    got = {}
    for group in report.get_image_measurement_groups():
        (probability,) = group.get_measurements(name=codes.DCM.Probability)
        got[group.finding_type.meaning] = float(probability.value)
        assert group.source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID
    want = {f["label"].replace("_", " "): f["probability"] for f in as_json.json()["findings"]}
    want["Pleural effusion"] = want.pop("Effusion")  # coded by the manifest's SNOMED CT
    want["Pulmonary edema"] = want.pop("Edema")
    assert got.keys() == want.keys()
    for label, p in want.items():
        assert got[label] == pytest.approx(p, abs=1e-5), label


def test_a_ct_series_as_sr_and_fhir_matches_its_json_result(server: Server) -> None:
    body = zip_series(make_ct_series(seed=5))
    as_json = predict(server, "lung-nodule-ct", body, ZIP_BODY).json()["findings"]
    assert as_json, "the synthetic nodule must be found for this test to mean anything"
    as_sr = predict(server, "lung-nodule-ct", body, ZIP_BODY, params={"format": "dicom-sr"})
    assert as_sr.status_code == 200, as_sr.text
    groups = hd.sr.Comprehensive3DSR.from_dataset(
        dcmread(BytesIO(as_sr.content))).content.get_planar_roi_measurement_groups()
    assert len(groups) == len(as_json)
    for group, finding in zip(groups, as_json, strict=True):
        np.testing.assert_allclose(group.roi.value[0], finding["centre_mm"], atol=1e-4)
        (diameter,) = group.get_measurements(name=codes.SCT.Diameter)
        assert float(diameter.value) == pytest.approx(finding["diameter_mm"], abs=1e-4)

    as_fhir = predict(server, "lung-nodule-ct", body, {**ZIP_BODY,
                                                        "Accept": "application/fhir+json"})
    assert as_fhir.headers["content-type"] == "application/fhir+json"
    report = DiagnosticReport.model_validate_json(as_fhir.content)
    scores = [float(o.valueQuantity.value) for o in report.contained[1:]]
    assert scores == pytest.approx([f["score"] for f in as_json], abs=1e-5)
    # the SR and the FHIR report name the same result
    sr_uid = dcmread(BytesIO(as_sr.content)).SOPInstanceUID
    assert report.identifier[0].value == f"urn:oid:{sr_uid}"


@pytest.mark.parametrize(("content", "headers", "params", "needle"), [
    (make_png(), {"Content-Type": "image/png", "Accept": "application/dicom"}, None,
     "needs DICOM input"),
    (NEMA_CR, {**DICOM_BODY, "Accept": "text/html"}, None, "application/dicom"),
    (NEMA_CR, DICOM_BODY, {"format": "pdf"}, "dicom-sr"),
], ids=["png-as-sr", "html", "unknown-format"])
def test_a_result_format_that_cannot_be_given_is_406(server, content, headers, params,
                                                     needle) -> None:
    r = predict(server, "cxr-triage", content, headers, params)
    assert r.status_code == 406, r.text
    assert needle in r.json()["error"]


def test_a_png_can_still_be_a_fhir_report(server: Server) -> None:
    r = predict(server, "cxr-triage", make_png(), {"Content-Type": "image/png"},
                params={"format": "fhir"})
    assert r.status_code == 200, r.text
    report = DiagnosticReport.model_validate_json(r.content)
    assert len(report.result) == 14 and report.imagingStudy is None
