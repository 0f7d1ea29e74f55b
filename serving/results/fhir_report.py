"""Imaging findings as a FHIR R4 DiagnosticReport, for apps that speak FHIR rather than DICOM.

The report is `preliminary`: it is decision support, and a clinician makes the final one. It
contains its Observations (one per finding) and the Device that made them (model, version,
manufacturer Medserve, intended use), so it stands alone; `imagingStudy` and `identifier` name
the study and the SR this result is also given as by their DICOM UIDs. It carries no patient
identifier: the app that sent the images knows whose they are.

Built and validated with fhir.resources' R4B models. R4B changed neither DiagnosticReport,
Observation nor Device from R4, so the JSON is valid R4.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.device import Device, DeviceDeviceName, DeviceVersion
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.observation import Observation, ObservationComponent
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference
from pydicom.sr.coding import Code

from serving.results.identity import MANUFACTURER, Algorithm

# FHIR's URIs for the coding schemes a finding code may come from (FHIR R4, "Using Codes").
SYSTEMS = {
    "SCT": "http://snomed.info/sct",
    "LN": "http://loinc.org",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "UCUM": "http://unitsofmeasure.org",
}
LOCAL_SYSTEM = "urn:medserve:code:"  # + the local scheme's designator
DICOM_UID = "urn:dicom:uid"
UCUM = SYSTEMS["UCUM"]
REPORT_CODE = Coding(system=SYSTEMS["LN"], code="18748-4", display="Diagnostic imaging study")
RADIOLOGY = Coding(system="http://terminology.hl7.org/CodeSystem/v2-0074", code="RAD",
                   display="Radiology")


def coding(code: Code) -> Coding:
    system = SYSTEMS.get(code.scheme_designator, LOCAL_SYSTEM + code.scheme_designator)
    return Coding(system=system, code=code.value, display=code.meaning)


def _concept(code: Code) -> CodeableConcept:
    return CodeableConcept(coding=[coding(code)], text=code.meaning)


def _local(value: str, meaning: str) -> CodeableConcept:
    return _concept(Code(value, "99MEDSERVE", meaning))


def _quantity(value: float, unit: str, code: str) -> Quantity:
    return Quantity(value=round(float(value), 6), unit=unit, system=UCUM, code=code)


def _observation(index: int, finding: dict[str, Any], code: Code) -> Observation:
    obs: dict[str, Any] = {
        "id": f"finding-{index + 1}",
        "status": "preliminary",
        "category": [CodeableConcept(coding=[Coding(
            system="http://terminology.hl7.org/CodeSystem/observation-category",
            code="imaging", display="Imaging")])],
        "code": _concept(code),
        "device": Reference(reference="#algorithm"),
    }
    if finding.get("probability") is not None:
        obs["valueQuantity"] = _quantity(finding["probability"], "probability", "1")
    elif finding.get("volume_ml") is not None:  # a segmented label
        obs["valueQuantity"] = _quantity(finding["volume_ml"], "mL", "mL")
    else:
        components = [ObservationComponent(
            code=_concept(Code("81827009", "SCT", "Diameter")),
            valueQuantity=_quantity(finding["diameter_mm"], "mm", "mm"),
        )]
        for axis, value in zip("xyz", finding["centre_mm"], strict=True):
            components.append(ObservationComponent(
                code=_local(f"centre-{axis}", f"Centre {axis} (DICOM patient LPS)"),
                valueQuantity=_quantity(value, "mm", "mm"),
            ))
        obs["valueQuantity"] = _quantity(finding["score"], "score", "1")
        obs["component"] = components
    return Observation(**obs)


def diagnostic_report(
    findings: Sequence[dict[str, Any]], codes_by_label: dict[str, Code], algorithm: Algorithm,
    study_uid: str | None, result_uid: str | None,
) -> DiagnosticReport:
    device = Device(
        id="algorithm",
        manufacturer=MANUFACTURER,
        deviceName=[DeviceDeviceName(name=algorithm.model, type="model-name")],
        version=[DeviceVersion(value=algorithm.version)],
        note=[{"text": f"Intended use: {algorithm.intended_use}"}],
    )
    observations = [
        _observation(i, f, codes_by_label[f["label"]]) for i, f in enumerate(findings)
    ]
    report: dict[str, Any] = {
        "status": "preliminary",
        "category": [CodeableConcept(coding=[RADIOLOGY])],
        "code": CodeableConcept(coding=[REPORT_CODE], text="AI imaging result"),
        "issued": datetime.now(UTC),
        "contained": [device, *observations],
        "conclusion": algorithm.decision_support,
    }
    if observations:  # FHIR allows no empty arrays
        report["result"] = [Reference(reference=f"#{o.id}") for o in observations]
    if study_uid:
        report["imagingStudy"] = [Reference(
            type="ImagingStudy",
            identifier=Identifier(system=DICOM_UID, value=f"urn:oid:{study_uid}"),
        )]
    if result_uid:
        report["identifier"] = [Identifier(system=DICOM_UID, value=f"urn:oid:{result_uid}")]
    return DiagnosticReport(**report)
