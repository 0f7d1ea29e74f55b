"""Imaging findings as a DICOM Structured Report: TID 1500 Measurement Report, via highdicom.

- A radiograph's findings: a Comprehensive SR with one measurement group (TID 1501) per label,
  its finding type the label's code and its measurement the model's probability, referencing
  the source image.
- CT nodule candidates: a Comprehensive 3D SR with one planar ROI group (TID 1410) per
  candidate: its centre as a SCOORD3D point in the source series' frame of reference, its
  diameter in mm and its detection score. The evidence lists every instance of the series.

Every group names the algorithm (TID 4019: model, version, and as its parameters the intended
use and the decision-support notice); the observer is the Medserve device. The patient and
study modules are copied from the source by highdicom, which copies nothing else of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from serving.errors import UnprocessableInput
from serving.results.identity import (
    MANUFACTURER,
    Algorithm,
    result_instance,
    result_uid,
    source_uids,
)

PROBABILITY = codes.DCM.Probability
DETECTION_SCORE = codes.SCT.Score
DIAMETER = codes.SCT.Diameter
NO_UNITS = Code("1", "UCUM", "no units")
# Type 2 attributes of the patient and study modules: a result must have them, empty if the
# source has none (real modalities often leave Study ID out).
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
          "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def with_type2(headers: Sequence[Dataset]) -> list[Dataset]:
    for ds in headers:
        for keyword in _TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
    return list(headers)


def _algorithm_id(algorithm: Algorithm) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=algorithm.model,
        version=algorithm.version,
        parameters=[f"Intended use: {algorithm.intended_use}", algorithm.decision_support],
    )


def _observation_context(algorithm: Algorithm) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=result_uid("device", algorithm, []),
        name=f"{MANUFACTURER} {algorithm.model}"[:64],
        manufacturer_name=MANUFACTURER,
        model_name=algorithm.model[:64],
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _tracking(algorithm: Algorithm, sources: Sequence[str], label: str, index: int
              ) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(
        uid=result_uid(f"finding/{index}/{label}", algorithm, sources),
        identifier=f"{label} {index + 1}"[:64],
    )


def radiograph_groups(
    findings: Sequence[dict[str, Any]], codes_by_label: dict[str, Code], header: Dataset,
    algorithm: Algorithm, sources: Sequence[str],
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    source = hd.sr.SourceImageForMeasurementGroup.from_source_image(header)
    return [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(algorithm, sources, f["label"], i),
            finding_type=codes_by_label[f["label"]],
            algorithm_id=_algorithm_id(algorithm),
            measurements=[hd.sr.Measurement(
                name=PROBABILITY, value=float(f["probability"]), unit=NO_UNITS,
            )],
            source_images=[source],
        )
        for i, f in enumerate(findings)
    ]


def candidate_groups(
    findings: Sequence[dict[str, Any]], codes_by_label: dict[str, Code], frame_of_reference: str,
    algorithm: Algorithm, sources: Sequence[str],
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    return [
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(algorithm, sources, f["label"], i),
            referenced_region=hd.sr.ImageRegion3D(
                graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                graphic_data=np.array([f["centre_mm"]], dtype=np.float64),
                frame_of_reference_uid=frame_of_reference,
            ),
            finding_type=codes_by_label[f["label"]],
            algorithm_id=_algorithm_id(algorithm),
            measurements=[
                hd.sr.Measurement(name=DIAMETER, value=float(f["diameter_mm"]),
                                  unit=codes.UCUM.Millimeter),
                hd.sr.Measurement(name=DETECTION_SCORE, value=float(f["score"]), unit=NO_UNITS),
            ],
        )
        for i, f in enumerate(findings)
    ]


def _none_found(
    codes_by_label: dict[str, Code], algorithm: Algorithm, sources: Sequence[str]
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A detector that found nothing says so: one group per label, each evaluated absent."""
    code = next(iter(codes_by_label.values()))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(algorithm, sources, "none found", 0),
        finding_type=code,
        algorithm_id=_algorithm_id(algorithm),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=c, value=codes.SCT.Absent)
            for c in codes_by_label.values()
        ],
    )


def structured_report(
    findings: Sequence[dict[str, Any]], codes_by_label: dict[str, Code],
    headers: Sequence[Dataset], algorithm: Algorithm, task: str,
) -> Dataset:
    """The SR of one prediction on `headers` (the source instances without their pixels)."""
    sources = source_uids(headers)
    groups: Sequence[Any]
    if task == "detection":
        frame = str(headers[0].get("FrameOfReferenceUID", "") or "")
        if not frame:
            raise UnprocessableInput("the series has no FrameOfReferenceUID; a DICOM SR of 3D "
                                     "findings needs one")
        groups = candidate_groups(findings, codes_by_label, frame, algorithm, sources)
        procedure = codes.cid100.CTUnspecifiedBodyRegion
        document: type[hd.sr.ComprehensiveSR] | type[hd.sr.Comprehensive3DSR] = (
            hd.sr.Comprehensive3DSR
        )
    else:
        groups = radiograph_groups(findings, codes_by_label, headers[0], algorithm, sources)
        procedure = codes.cid100.XRUnspecifiedBodyRegion
        document = hd.sr.ComprehensiveSR
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm),
        procedure_reported=procedure,
        imaging_measurements=groups or [_none_found(codes_by_label, algorithm, sources)],
    )
    try:
        return document(
            evidence=with_type2(headers), content=report[0], is_complete=True,
            **result_instance("sr", algorithm, headers, sources),
        )
    except (AttributeError, ValueError, TypeError):
        # highdicom names the attribute it missed; the source's values are never echoed
        raise UnprocessableInput("the source instances lack the patient, study or series "
                                 "attributes a DICOM SR must copy") from None
