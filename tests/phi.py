"""Marker patient data for leak tests: DICOM instances whose every identifying attribute
holds a recognisable marker, and the search that looks for those markers anywhere.

The attributes are those of DICOM PS3.15 Annex E (Basic Application Level Confidentiality
Profile) that a test can fill with a unique value: names, IDs, addresses, phone numbers,
descriptions and comments, dates, UIDs, device and station identifiers, a sequence item and
a private element. PatientAge and PatientSex are in the profile too, but their value sets are
too small for a value to be unique, so they cannot be searched for.

Every text marker contains ``QZPHI``, so one case-insensitive search finds any of them, also
in a person name rendered with spaces or commas instead of DICOM's ``^``, cut in half at a
``^``, or upper/lower-cased. Dates and UIDs are digits: they are searched as whole numbers
(not inside longer digit runs such as timestamps) and in the usual date renderings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from io import BytesIO

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

PREFIX = "QZPHI"
UID_ROOT = "2.25.80914262775319468821"  # digits no log line holds by chance
BIRTH_DATE = "19010203"
OTHER_DATE = "19020304"
BIRTH_TIME = "235959.987654"

TEXT_KEYWORDS = (
    "AccessionNumber", "AdditionalPatientHistory", "AdmissionID", "AdmittingDiagnosesDescription",
    "Allergies", "BranchOfService", "ContentCreatorName", "CountryOfResidence",
    "CurrentPatientLocation", "DerivationDescription", "DeviceSerialNumber", "EthnicGroup",
    "ImageComments", "InstitutionAddress", "InstitutionName", "InstitutionalDepartmentName",
    "InsurancePlanIdentification", "IssuerOfPatientID", "MedicalAlerts", "MedicalRecordLocator",
    "MilitaryRank", "NameOfPhysiciansReadingStudy", "Occupation", "OperatorsName",
    "OtherPatientIDs", "OtherPatientNames", "PatientAddress", "PatientBirthName",
    "PatientComments", "PatientID", "PatientInstitutionResidence", "PatientMotherBirthName",
    "PatientName", "PatientReligiousPreference", "PatientState", "PatientTelephoneNumbers",
    "PerformedProcedureStepDescription", "PerformedProcedureStepID", "PerformingPhysicianName",
    "PhysiciansOfRecord", "ProtocolName", "ReasonForStudy", "ReferringPhysicianAddress",
    "ReferringPhysicianName", "ReferringPhysicianTelephoneNumbers", "RegionOfResidence",
    "RequestedContrastAgent", "RequestedProcedureDescription", "RequestingPhysician",
    "ResponsibleOrganization", "ResponsiblePerson", "SeriesDescription",
    "ServiceEpisodeDescription", "SpecialNeeds", "StationName", "StudyDescription", "StudyID",
    "VisitComments",
)
DATE_KEYWORDS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
                 "PerformedProcedureStepStartDate")
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "DeviceUID",
                "InstanceCreatorUID", "IrradiationEventUID")
SEQUENCE_KEYWORDS = ("RequestedProcedureID", "ScheduledProcedureStepID",
                     "ScheduledProcedureStepDescription")


def marker(code: str) -> str:
    """A text marker; at most 16 characters, so it fits every VR (SH is the shortest)."""
    return f"{PREFIX}{code}"[:16]


def _text(keyword: str, code: str) -> str:
    if dictionary_VR(tag_for_keyword(keyword)) == "PN":  # family^given^middle
        return "^".join(marker(f"{code}{part}") for part in "FGM")
    return marker(code)


def mark(data: bytes, instance: int = 0) -> bytes:
    """The same instance with every profile attribute holding a marker; `instance` numbers
    the SOP Instance UID so the instances of a series stay distinct."""
    ds = dcmread(BytesIO(data))
    for index, keyword in enumerate(TEXT_KEYWORDS):
        setattr(ds, keyword, _text(keyword, f"{index:03d}X"))
    ds.PatientBirthDate = BIRTH_DATE
    ds.PatientBirthTime = BIRTH_TIME
    for keyword in DATE_KEYWORDS:
        setattr(ds, keyword, OTHER_DATE)
    for index, keyword in enumerate(UID_KEYWORDS):
        setattr(ds, keyword, f"{UID_ROOT}.{index + 1}")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{UID_ROOT}.9.{instance}"
    item = Dataset()
    for index, keyword in enumerate(SEQUENCE_KEYWORDS):
        setattr(item, keyword, marker(f"S{index}Q"))
    ds.RequestAttributesSequence = [item]
    block = ds.private_block(0x0009, "MEDSERVE LEAK TEST", create=True)
    block.add_new(0x10, "LO", marker("PRIVATE"))
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    """Swap a value in the encoded file for an invalid one of the same length (pydicom will
    not write an invalid value itself), e.g. a marker where a date must be."""
    assert data.count(old) == 1 and len(old) == len(new)
    return data.replace(old, new)


def _digits(value: str) -> bytes:
    return rb"(?<![0-9])" + re.escape(value).encode() + rb"(?![0-9])"


_DATES = (BIRTH_DATE, OTHER_DATE)
_DATE_FORMS = [
    *(f"{d[:4]}{sep}{d[4:6]}{sep}{d[6:]}" for d in _DATES for sep in ("", "-", "/", ".")),
    *(f"{d[6:]}/{d[4:6]}/{d[:4]}" for d in _DATES),
]
NEEDLES = re.compile(
    b"|".join([re.escape(PREFIX).encode(), re.escape(UID_ROOT.split(".")[-1]).encode(),
               _digits(BIRTH_TIME), *(_digits(form) for form in _DATE_FORMS)]),
    re.IGNORECASE,
)


def find_markers(sources: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> list[str]:
    """`source: context` for every marker found, with a few bytes around it to tell where."""
    items = sources.items() if isinstance(sources, Mapping) else sources
    hits = []
    for name, data in items:
        for match in NEEDLES.finditer(data):
            context = data[max(0, match.start() - 60):match.end() + 60]
            hits.append(f"{name}: {context!r}")
    return hits
