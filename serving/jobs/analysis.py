"""One study, analysed: which model runs on which series, fetch, predict, store the result.

A series goes to every chosen model whose manifest accepts its modality and body part
(`modalities`, `body_parts`): a detector or a segmenter takes the whole series, a classifier
(`cxr-triage`) each instance. What a model cannot take (too few slices, wrong geometry, too
large) is skipped with its reason, and the rest still runs; a study nothing could be run on
fails. PACS and model outages (`Unavailable`) propagate: the job is tried again later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from io import BytesIO
from typing import Any, Protocol

from pydicom import dcmread

from serving.dicomweb.pacs import Pacs, SeriesInfo
from serving.errors import (
    InvalidInput,
    MedserveError,
    PayloadTooLarge,
    UnprocessableInput,
    UnsupportedMediaType,
)
from serving.imaging.pipeline import Payload
from serving.protocol.jobs import JobResult, JobSkip
from serving.protocol.results import ResultFormat
from serving.schema.imaging import ModelManifest

# model name, payload -> (served version, predict result with its SR/SEG under "encoded")
Predict = Callable[[str, Payload], Awaitable[tuple[str, dict[str, Any]]]]
# What a model cannot take is a skip; anything else (a 503, a 504) is the job's problem.
SKIPPABLE = (InvalidInput, UnprocessableInput, PayloadTooLarge, UnsupportedMediaType)


class NothingToAnalyze(UnprocessableInput):
    """No chosen model accepts any series of the study."""


class StudySource(Protocol):
    """Where a job's study comes from: the PACS (analyze) or the spool (STOW-RS to Medserve)."""

    def series(self) -> list[SeriesInfo]: ...

    def instances(self, series: SeriesInfo) -> list[bytes]: ...


class ResultSink(Protocol):
    """Where its DICOM results go: the PACS, or the spool when there is none."""

    def store(self, instance: bytes) -> None: ...


class PacsStudy:
    def __init__(self, pacs: Pacs, study_uid: str) -> None:
        self.pacs, self.study_uid = pacs, study_uid

    def series(self) -> list[SeriesInfo]:
        return self.pacs.series(self.study_uid)

    def instances(self, series: SeriesInfo) -> list[bytes]:
        return self.pacs.instances(self.study_uid, series)


def plan(series: Sequence[SeriesInfo], models: Sequence[str],
         manifests: Mapping[str, ModelManifest]) -> list[tuple[str, SeriesInfo]]:
    """(model, series) pairs: each series with every chosen model whose manifest takes its
    modality and body part."""
    return [(name, s) for s in series for name in models
            if manifests[name].routes(s.modality, s.body_part)]


def _payloads(manifest: ModelManifest, parts: list[bytes]) -> list[Payload]:
    if manifest.task == "segmentation":
        return [Payload("application/dicom", parts, ResultFormat.DICOM_SEG)]
    if manifest.task == "detection":
        return [Payload("application/dicom", parts, ResultFormat.DICOM_SR)]
    return [Payload("application/dicom", [p], ResultFormat.DICOM_SR) for p in parts]


def _sop_instance_uid(sr: bytes) -> str:
    return str(dcmread(BytesIO(sr), stop_before_pixels=True).SOPInstanceUID)


async def analyze_study(
    source: StudySource, sink: ResultSink, models: Sequence[str],
    manifests: Mapping[str, ModelManifest], predict: Predict,
) -> tuple[list[JobResult], list[JobSkip]]:
    series = await asyncio.to_thread(source.series)
    pairs = plan(series, models, manifests)
    if not pairs:
        raise NothingToAnalyze("no series of the study has a modality and body part the chosen "
                               "models take")
    results: list[JobResult] = []
    skipped: list[JobSkip] = []
    fetched: dict[str, list[bytes]] = {}
    for name, s in pairs:
        try:
            if s.uid not in fetched:  # pairs come series by series: hold one series at a time
                fetched = {s.uid: await asyncio.to_thread(source.instances, s)}
        except SKIPPABLE as exc:
            skipped.append(JobSkip(model=name, series_instance_uid=s.uid, reason=_reason(exc)))
            continue
        for payload in _payloads(manifests[name], fetched[s.uid]):
            try:
                version, result = await predict(name, payload)
            except SKIPPABLE as exc:
                skipped.append(JobSkip(model=name, series_instance_uid=s.uid,
                                       reason=_reason(exc)))
                continue
            encoded: bytes = result["encoded"]
            await asyncio.to_thread(sink.store, encoded)
            results.append(JobResult(
                model=name, version=version, series_instance_uid=s.uid,
                sop_instance_uid=_sop_instance_uid(encoded), findings=len(result["findings"]),
            ))
    if not results:
        raise NothingToAnalyze("no model could analyse any series of the study: " +
                               "; ".join(f"{s.model}: {s.reason}" for s in skipped))
    return results, skipped


def _reason(exc: MedserveError) -> str:
    return f"{exc.status_code} {exc.message}"
