"""One prediction's findings in the format the client asked for (serving/protocol/results.py).

Runs in the imaging replica, next to the source instances' headers it references, so no
patient attribute travels to the gateway except inside the result a client asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from typing import Any

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset

from serving.protocol.results import ResultFormat
from serving.results.dicom_seg import segmentation
from serving.results.dicom_sr import structured_report
from serving.results.fhir_report import diagnostic_report
from serving.results.identity import Algorithm, finding_code, result_uid, source_uids
from serving.schema.imaging import ModelManifest


def encode_result(
    fmt: ResultFormat, manifest: ModelManifest, version: str,
    findings: Sequence[dict[str, Any]], headers: Sequence[Dataset],
    mask: np.ndarray | None = None,
) -> bytes:
    """The findings as DICOM SR or SEG (Part 10 bytes; a SEG needs the label `mask` on the
    series' voxels) or as a FHIR DiagnosticReport (JSON bytes)."""
    algorithm = Algorithm.of(manifest, version)
    codes = {label: finding_code(manifest, label) for label in manifest.labels}
    if fmt in (ResultFormat.DICOM_SR, ResultFormat.DICOM_SEG):
        if fmt is ResultFormat.DICOM_SEG:
            if mask is None:
                raise ValueError("a DICOM SEG needs the label mask")
            categories = {label: c.category for label, c in manifest.finding_codes.items()}
            ds = segmentation(mask, manifest.labels, codes, categories, headers, algorithm)
        else:
            ds = structured_report(findings, codes, headers, algorithm, manifest.task)
        out = BytesIO()
        dcmwrite(out, ds, enforce_file_format=True)
        return out.getvalue()
    if fmt is ResultFormat.FHIR:
        study = str(headers[0].get("StudyInstanceUID", "") or "") if headers else None
        uid = result_uid("sr", algorithm, source_uids(headers)) if headers else None
        return diagnostic_report(findings, codes, algorithm, study, uid).model_dump_json(
            exclude_none=True
        ).encode()
    raise ValueError(f"{fmt} is not an encoded result format")
