"""Who made a result and how it is named: the algorithm's identity and deterministic UIDs.

A result's UIDs are derived from the model, its version and the source instances, never drawn
at random: the same study analysed again by the same model version gives the same SOP
Instance UID, so a PACS that already holds the result stores it once, whoever retries.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from serving.errors import UnprocessableInput
from serving.protocol.imaging import DECISION_SUPPORT
from serving.schema.imaging import ModelManifest

# highdicom logs the source SOP Instance UID at INFO while copying the patient and study;
# keep its records away from the service's handlers, as pydicom's are (imaging/dicom.py).
_highdicom_log = logging.getLogger("highdicom")
_highdicom_log.propagate = False
_highdicom_log.addHandler(logging.NullHandler())  # not even logging's last-resort stderr

MANUFACTURER = "Medserve"
LOCAL_SCHEME = "99MEDSERVE"  # DICOM PS3.16: local coding schemes start with 99


@dataclass(frozen=True)
class Algorithm:
    """The model version a result comes from, with the statements every result carries."""

    model: str
    version: str
    intended_use: str
    decision_support: str = DECISION_SUPPORT

    @classmethod
    def of(cls, manifest: ModelManifest, version: str) -> Algorithm:
        return cls(manifest.name, version, " ".join(manifest.intended_use.split()))


def finding_code(manifest: ModelManifest, label: str) -> Code:
    """The coded concept of a label: the manifest's, else the label in the local scheme."""
    coded = manifest.finding_codes.get(label)
    if coded is not None:
        return Code(coded.value, coded.scheme, coded.meaning)
    return Code(label[:64], LOCAL_SCHEME, label.replace("_", " ")[:64])


def source_uids(headers: Sequence[Dataset]) -> list[str]:
    """The source instances' SOP Instance UIDs, checked present (a result references them)."""
    uids = [str(ds.get("SOPInstanceUID", "") or "") for ds in headers]
    if not headers or not all(uids):
        raise UnprocessableInput("a DICOM result needs DICOM input with SOP Instance UIDs")
    return uids


_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:medserve:result")


def result_uid(kind: str, algorithm: Algorithm, sources: Sequence[str]) -> str:
    """A UID that names one result of one model version on these sources: the 2.25 form of a
    name-based (SHA-1) UUID (PS3.5 B.2), so it needs no registered root and never repeats
    for different inputs."""
    name = "\n".join(["medserve", kind, algorithm.model, algorithm.version, *sorted(sources)])
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


SERIES_NUMBER = 9901  # results sort after the acquired series in a viewer


def result_instance(kind: str, algorithm: Algorithm, headers: Sequence[Dataset],
                    sources: Sequence[str]) -> dict[str, Any]:
    """What every result instance (SR, SEG) says of itself: its deterministic UIDs, that
    Medserve made it with which model version, and a series description saying it is AI."""
    return {
        "series_instance_uid": result_uid(f"{kind}-series", algorithm,
                                          [str(headers[0].StudyInstanceUID)]),
        "series_number": SERIES_NUMBER,
        "sop_instance_uid": result_uid(kind, algorithm, sources),
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": algorithm.model[:64],
        "software_versions": algorithm.version[:64],
        "series_description": f"AI result: {algorithm.model} {algorithm.version}"[:64],
    }
