"""Imaging results as DICOM SR and FHIR: what they say, what they reference, what they copy.

Each SR is written to Part 10 bytes, read back with pydicom and parsed by highdicom's own
TID 1500 reader; its measurements must equal the findings it was given. The source carries a
marker in every identifying attribute (tests/phi.py): only the patient and study modules'
may reach the SR.
"""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from highdicom._standard_utils import (
    get_iod_module_map,
    get_module_attribute_map,
    get_sop_class_iod_map,
)
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from serving.errors import NotAcceptable, UnprocessableInput
from serving.imaging.dicom import decode_series, read_radiograph
from serving.protocol.results import ResultFormat, negotiate
from serving.repository.store import load_repository
from serving.results.encode import encode_result
from serving.schema.imaging import ModelManifest
from serving.testing.samples import make_ct_series, make_radiograph
from tests.conftest import MODEL_REPO
from tests.phi import PREFIX, UID_ROOT, mark

REPO = load_repository(MODEL_REPO)
CXR = REPO.manifest("cxr-triage")
CT = REPO.manifest("lung-nodule-ct")
CXR_FINDINGS = [{"label": label, "probability": round(0.05 + 0.06 * i, 6)}
                for i, label in enumerate(CXR.labels)]
CT_FINDINGS = [
    {"label": "nodule", "centre_mm": [-10.0, 2.0, -2.5], "diameter_mm": 7.5, "score": 0.91},
    {"label": "nodule", "centre_mm": [12.4, -3.2, 5.0], "diameter_mm": 4.25, "score": 0.33},
]


def _radiograph(phi: bool = False) -> Dataset:
    data = make_radiograph()
    return read_radiograph(mark(data) if phi else data, CXR.modalities)[1]


def _series(phi: bool = False) -> list[Dataset]:
    parts = make_ct_series(slices=8, rows=32, cols=32)
    if phi:
        parts = [mark(p, i) for i, p in enumerate(parts)]
    return decode_series(parts, CT.modalities).headers


def _sr(manifest: ModelManifest, findings: list[dict], headers: list[Dataset]) -> Dataset:
    return dcmread(BytesIO(encode_result(ResultFormat.DICOM_SR, manifest, "1", findings,
                                         headers)))


def _measurement(group, name) -> float:
    (m,) = group.get_measurements(name=name)
    return float(m.value)


# -- format negotiation -------------------------------------------------------------------

@pytest.mark.parametrize(("param", "accept", "want"), [
    (None, None, ResultFormat.JSON),
    (None, "", ResultFormat.JSON),
    (None, "*/*", ResultFormat.JSON),
    (None, "application/json", ResultFormat.JSON),
    (None, "application/dicom", ResultFormat.DICOM_SR),
    (None, "application/fhir+json", ResultFormat.FHIR),
    (None, "text/html, application/fhir+json;q=0.9, */*;q=0.1", ResultFormat.FHIR),
    (None, "application/json;q=0.2, application/dicom", ResultFormat.DICOM_SR),
    (None, "text/html,application/xhtml+xml,*/*;q=0.8", ResultFormat.JSON),
    ("dicom-sr", "application/json", ResultFormat.DICOM_SR),
    ("FHIR", None, ResultFormat.FHIR),
])
def test_the_format_comes_from_the_query_then_accept(param, accept, want) -> None:
    assert negotiate(param, accept) is want


@pytest.mark.parametrize(("param", "accept"), [
    ("pdf", None), (None, "text/html"), (None, "application/dicom;q=0"),
])
def test_a_format_medserve_cannot_give_is_406(param, accept) -> None:
    with pytest.raises(NotAcceptable) as err:
        negotiate(param, accept)
    assert err.value.status_code == 406


# -- DICOM SR ------------------------------------------------------------------------------

def test_radiograph_sr_has_one_group_per_finding_with_its_code_and_probability() -> None:
    header = _radiograph()
    sr = _sr(CXR, CXR_FINDINGS, [header])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert sr.Modality == "SR" and sr.Manufacturer == "Medserve"
    report = hd.sr.ComprehensiveSR.from_dataset(sr).content
    groups = report.get_image_measurement_groups()
    assert len(groups) == len(CXR_FINDINGS)
    by_code = {(g.finding_type.scheme_designator, g.finding_type.value): g for g in groups}
    for finding in CXR_FINDINGS:
        coded = CXR.finding_codes.get(finding["label"])
        key = (coded.scheme, coded.value) if coded else ("99MEDSERVE", finding["label"])
        group = by_code[key]
        assert _measurement(group, codes.DCM.Probability) == pytest.approx(finding["probability"])
        (source,) = group.source_images
        assert source.referenced_sop_instance_uid == header.SOPInstanceUID
    assert report.get_observer_contexts()[0].observer_identifying_attributes[1].value == \
        "Medserve cxr-triage"


def test_ct_sr_puts_each_candidate_centre_in_the_series_frame_of_reference() -> None:
    headers = _series()
    sr = _sr(CT, CT_FINDINGS, headers)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    groups = report.get_planar_roi_measurement_groups()
    assert len(groups) == len(CT_FINDINGS)
    for group, finding in zip(groups, CT_FINDINGS, strict=True):
        assert group.finding_type.value == "27925004"  # SNOMED CT Nodule, from the manifest
        region = group.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues3D.POINT
        assert region.frame_of_reference_uid == headers[0].FrameOfReferenceUID
        np.testing.assert_allclose(region.value[0], finding["centre_mm"])
        assert _measurement(group, codes.SCT.Diameter) == pytest.approx(finding["diameter_mm"])
        assert _measurement(group, codes.SCT.Score) == pytest.approx(finding["score"])
    evidence = hd.sr.Comprehensive3DSR.from_dataset(sr).get_evidence()
    assert {e[2] for e in evidence} == {str(h.SOPInstanceUID) for h in headers}
    assert {e[1] for e in evidence} == {str(headers[0].SeriesInstanceUID)}


def test_every_sr_names_the_algorithm_its_intended_use_and_the_clinician() -> None:
    for manifest, findings, headers in ((CXR, CXR_FINDINGS, [_radiograph()]),
                                        (CT, CT_FINDINGS, _series())):
        sr = _sr(manifest, findings, headers)
        texts = {str(e.value) for e in sr.iterall() if e.keyword == "TextValue"}
        intended = " ".join(manifest.intended_use.split())
        assert f"Intended use: {intended}" in texts
        assert any("clinician" in t and "final decision" in t for t in texts)
        assert manifest.name in texts and "1" in texts  # TID 4019 name and version
        assert sr.SeriesDescription.startswith("AI result")
        assert sr.ManufacturerModelName == manifest.name and sr.SoftwareVersions == "1"


def test_a_ct_with_no_candidates_is_reported_as_none_found() -> None:
    report = hd.sr.Comprehensive3DSR.from_dataset(_sr(CT, [], _series())).content
    assert report.get_planar_roi_measurement_groups() == []
    (group,) = report.get_image_measurement_groups()
    (evaluation,) = group.get_qualitative_evaluations()
    assert evaluation.name.value == "27925004" and evaluation.value == codes.SCT.Absent
    fhir = DiagnosticReport.model_validate_json(
        encode_result(ResultFormat.FHIR, CT, "1", [], _series()))
    assert fhir.result is None and [r.id for r in fhir.contained] == ["algorithm"]


def test_sr_uids_are_deterministic_per_model_version_and_source() -> None:
    headers = _series()
    first, again = _sr(CT, CT_FINDINGS, headers), _sr(CT, CT_FINDINGS[:1], _series())
    assert first.SOPInstanceUID == again.SOPInstanceUID  # a retry stores the same instance
    assert first.SeriesInstanceUID == again.SeriesInstanceUID
    other_study = decode_series(make_ct_series(slices=8, rows=32, cols=32, seed=9),
                                CT.modalities).headers
    assert _sr(CT, CT_FINDINGS, other_study).SOPInstanceUID != first.SOPInstanceUID
    v2 = encode_result(ResultFormat.DICOM_SR, CT, "2", CT_FINDINGS, headers)
    assert dcmread(BytesIO(v2)).SOPInstanceUID != first.SOPInstanceUID
    assert first.SOPInstanceUID.startswith("2.25.")


def _patient_and_study_keywords(sop_class_uid: str) -> set[str]:
    """The root attributes of the source IOD's Patient and Study IE modules (PS3.3)."""
    iod = get_sop_class_iod_map()[sop_class_uid]
    modules = [m["key"] for m in get_iod_module_map()[iod] if m["ie"] in ("Patient", "Study")]
    return {str(a["keyword"]) for m in modules for a in get_module_attribute_map()[m]
            if not a["path"]}


# What an SR must reference of its source beyond the patient and study: the instances, their
# series, and (for 3D coordinates) the frame of reference.
REFERENCES = {"SeriesInstanceUID", "ReferencedSOPInstanceUID", "ReferencedSOPClassUID",
              "ReferencedFrameOfReferenceUID", "StudyInstanceUID"}


@pytest.mark.parametrize("kind", ["radiograph", "ct"])
def test_an_sr_copies_only_the_patient_and_study_modules_of_its_source(kind) -> None:
    headers = [_radiograph(phi=True)] if kind == "radiograph" else _series(phi=True)
    manifest, findings = (CXR, CXR_FINDINGS) if kind == "radiograph" else (CT, CT_FINDINGS)
    sr = _sr(manifest, findings, headers)
    allowed = _patient_and_study_keywords(headers[0].SOPClassUID) | REFERENCES
    leaked = []
    for element in sr.iterall():
        value = str(element.value) if element.VR != "SQ" else ""
        if (PREFIX in value.upper() or UID_ROOT in value) and element.keyword not in allowed:
            leaked.append(element.keyword)
    assert leaked == []
    # the result belongs to the same patient and study
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID",
                    "AccessionNumber", "StudyID", "ReferringPhysicianName"):
        assert str(sr[keyword].value) == str(headers[0][keyword].value), keyword
    # and nothing of the source's series, equipment or institution
    for keyword in ("InstitutionName", "StationName", "OperatorsName", "DeviceSerialNumber",
                    "ProtocolName", "PatientAddress", "ImageComments"):
        assert PREFIX.encode() not in bytes(str(sr.get(keyword, "")), "utf-8"), keyword
    assert sr.SeriesDescription.startswith("AI result")


def test_a_series_without_frame_of_reference_cannot_be_an_sr() -> None:
    headers = _series()
    for h in headers:
        del h.FrameOfReferenceUID
    with pytest.raises(UnprocessableInput, match="FrameOfReferenceUID"):
        encode_result(ResultFormat.DICOM_SR, CT, "1", CT_FINDINGS, headers)


def test_an_sr_needs_source_instances() -> None:
    with pytest.raises(UnprocessableInput, match="DICOM input"):
        encode_result(ResultFormat.DICOM_SR, CXR, "1", CXR_FINDINGS, [])


# -- FHIR ----------------------------------------------------------------------------------

def test_fhir_report_is_a_valid_preliminary_diagnostic_report() -> None:
    headers = _series(phi=True)
    body = encode_result(ResultFormat.FHIR, CT, "1", CT_FINDINGS, headers)
    report = DiagnosticReport.model_validate_json(body)  # fhir.resources validates it
    assert report.status == "preliminary"
    assert "clinician" in report.conclusion
    study = report.imagingStudy[0].identifier.value
    assert study == f"urn:oid:{headers[0].StudyInstanceUID}"
    sr_uid = _sr(CT, CT_FINDINGS, headers).SOPInstanceUID
    assert report.identifier[0].value == f"urn:oid:{sr_uid}"  # the same result as the SR
    contained = {r.id: r for r in report.contained}
    device = contained["algorithm"]
    assert device.manufacturer == "Medserve" and device.version[0].value == "1"
    assert device.deviceName[0].name == "lung-nodule-ct"
    assert "Intended use" in device.note[0].text
    observations = [contained[ref.reference[1:]] for ref in report.result]
    assert len(observations) == len(CT_FINDINGS)
    for obs, finding in zip(observations, CT_FINDINGS, strict=True):
        assert obs.status == "preliminary"
        assert obs.code.coding[0].system == "http://snomed.info/sct"
        assert obs.code.coding[0].code == "27925004"
        assert float(obs.valueQuantity.value) == pytest.approx(finding["score"])
        parts = {c.code.coding[0].code: float(c.valueQuantity.value) for c in obs.component}
        assert parts["81827009"] == pytest.approx(finding["diameter_mm"])
        assert [parts[f"centre-{a}"] for a in "xyz"] == pytest.approx(finding["centre_mm"])
    # no patient data beyond the study's UID
    text = json.dumps(json.loads(body))
    assert PREFIX not in text.upper() and "subject" not in json.loads(body)


def test_fhir_report_of_a_radiograph_carries_each_probability() -> None:
    body = encode_result(ResultFormat.FHIR, CXR, "1", CXR_FINDINGS, [_radiograph()])
    report = DiagnosticReport.model_validate_json(body)
    values = {}
    for obs in report.contained[1:]:
        coding = obs.code.coding[0]
        values[coding.display] = float(obs.valueQuantity.value)
        assert obs.valueQuantity.code == "1"
    assert values["Pleural effusion"] == pytest.approx(CXR_FINDINGS[2]["probability"])
    assert values["Atelectasis"] == pytest.approx(CXR_FINDINGS[0]["probability"])


# -- manifests ----------------------------------------------------------------------------

def test_shipped_finding_codes_are_the_code_dictionary_s() -> None:
    """Every code in a shipped manifest is in pydicom's dictionary with that meaning."""
    known = {}
    for scheme in ("SCT", "DCM", "LN"):
        collection = getattr(codes, scheme)
        for name in collection.dir():
            code = getattr(collection, name)
            known.setdefault((scheme, code.value), set()).add(code.meaning)
    checked = 0
    for manifest in (CXR, CT):
        for label, coded in manifest.finding_codes.items():
            # one meaning only: a code the dictionary gives two meanings cannot be trusted
            assert known.get((coded.scheme, coded.value)) == {coded.meaning}, (manifest.name,
                                                                               label)
            checked += 1
    assert checked >= 7


def test_a_finding_code_for_an_unknown_label_is_refused(tmp_path: Path) -> None:
    data = CT.model_dump(mode="json", exclude_none=True)
    data["finding_codes"] = {"tumour": {"scheme": "SCT", "value": "1", "meaning": "x"}}
    with pytest.raises(ValueError, match="finding_codes names labels not in labels: tumour"):
        ModelManifest.model_validate(data)
