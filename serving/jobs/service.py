"""Study jobs as the gateway offers them: accept a study (`submit`: analyse one the PACS holds;
`receive`: one sent to Medserve over STOW-RS), look a job up, and run jobs in the background
(serving/jobs/runner.py) through the gateway's own admission control, so a job's predictions
queue and shed by priority like any request of its tenant.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from serving.dicomweb.pacs import Pacs
from serving.errors import (
    Forbidden,
    InvalidInput,
    ModelNotFound,
    NotConfigured,
    UnprocessableInput,
)
from serving.imaging.dicom import read_header
from serving.imaging.pipeline import Payload
from serving.jobs.analysis import PacsStudy, ResultSink, StudySource, analyze_study
from serving.jobs.runner import JobRunner
from serving.jobs.spool import Spool, SpooledStudy, SpoolResults
from serving.jobs.store import JobStore, new_job_id
from serving.protocol.jobs import Job, JobResult, JobSkip
from serving.protocol.priority import Priority
from serving.schema.cluster import ClusterConfig
from serving.schema.imaging import ModelManifest

STORE_FILE = "medserve_jobs.sqlite"
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
# model, payload, priority -> (version, predict result)
RouterPredict = Callable[[str, Payload, Priority], Awaitable[tuple[str, dict[str, Any]]]]
MayUse = Callable[[str], bool]  # the caller's allow-list (auth off: everything)


def default_store_path() -> Path:
    """In the Ray session directory, next to Serve's logs: it outlives replicas."""
    try:
        from ray.serve._private.logging_utils import get_serve_logs_dir

        return Path(get_serve_logs_dir()).parent.parent / STORE_FILE
    except ImportError:  # pragma: no cover - Serve moved its helper
        return Path(STORE_FILE)


def check_uid(uid: str, what: str) -> str:
    if len(uid) > 64 or not _UID.fullmatch(uid):
        raise InvalidInput(f"{what} must be a DICOM UID (digits and dots, at most 64 "
                           "characters)")
    return uid


class Header(NamedTuple):
    """What a received instance says of itself (its pixels are not read here)."""

    study: str
    series: str
    sop_class: str
    sop_instance: str
    modality: str
    body_part: str


@dataclass(frozen=True)
class Received:
    """A STOW-RS request taken in: its job and the instances it holds (class, instance)."""

    job: Job
    instances: list[tuple[str, str]]


class StudyJobs:
    def __init__(
        self, config: ClusterConfig, manifests: Mapping[str, ModelManifest],
        predict: RouterPredict,
    ) -> None:
        self.manifests = manifests
        self.pacs = Pacs(config.pacs, config.limits) if config.pacs else None
        path = Path(config.jobs.store_path) if config.jobs.store_path else default_store_path()
        self.store = JobStore(path)
        self.spool = Spool(path.parent / (path.stem + "_spool"))
        self._predict = predict
        retry_delay_s = config.pacs.backoff_s * 4 if config.pacs else 1.0
        self.runner = JobRunner(self.store, config.jobs, self._analyze, retry_delay_s)

    def _where(self, job: Job) -> tuple[StudySource, ResultSink]:
        if job.source == "stow":
            sink: ResultSink = self.pacs or SpoolResults(self.spool, job.id)
            return SpooledStudy(self.spool, job.id), sink
        if self.pacs is None:
            raise NotConfigured("this job needs a PACS and the cluster has none")
        return PacsStudy(self.pacs, job.study_instance_uid), self.pacs

    async def _analyze(self, job: Job, tenant: str | None
                       ) -> tuple[list[JobResult], list[JobSkip]]:
        priority = Priority.from_label(job.priority)
        source, sink = self._where(job)
        outcome = await analyze_study(
            source, sink, job.models, self.manifests,
            lambda model, payload: self._predict(model, payload, priority),
        )
        if job.source == "stow":
            await asyncio.to_thread(self.spool.drop_inputs, job.id)
        return outcome

    def _models(self, asked: Sequence[str] | None, may_use: MayUse) -> list[str]:
        if not asked:
            chosen = [m for m in self.manifests if may_use(m)]
            if not chosen:
                raise Forbidden("this API key may not use any imaging model")
            return chosen
        for name in asked:
            if not may_use(name):
                raise Forbidden("this API key may not use the requested model")
            if name not in self.manifests:
                raise ModelNotFound("unknown imaging model in models; imaging models: "
                                    + ", ".join(sorted(self.manifests)))
        return list(dict.fromkeys(asked))

    async def submit(self, study_uid: str, models: Sequence[str] | None, tenant: str | None,
                     priority: Priority, may_use: MayUse) -> Job:
        """Accept a job on a study in the PACS once the PACS has it (404 if not, 503 if the
        PACS is away)."""
        if self.pacs is None:
            raise NotConfigured("study analysis needs a PACS: set `pacs:` in medserve.yaml")
        check_uid(study_uid, "StudyInstanceUID")
        chosen = self._models(models, may_use)
        await asyncio.to_thread(self.pacs.series, study_uid)
        job = await asyncio.to_thread(self.store.create, study_uid, chosen, tenant, priority)
        self.runner.ensure_started()
        return job

    async def receive(self, parts: list[bytes], study_uid: str | None, tenant: str | None,
                      priority: Priority, may_use: MayUse) -> Received:
        """Take in a STOW-RS request: one study's instances, each series of one study; a job
        runs the models its series route to. All or nothing: a bad instance is a 400."""
        if study_uid is not None:
            check_uid(study_uid, "StudyInstanceUID")
        chosen = self._models(None, may_use)
        headers = await asyncio.to_thread(_headers, parts)
        studies = {h.study for h in headers}
        if len(studies) != 1 or (study_uid is not None and studies != {study_uid}):
            raise InvalidInput("the instances must belong to one study (the one in the URL, "
                               "if given)")
        series_study: dict[str, str] = {}
        for h in headers:
            if series_study.setdefault(h.series, h.study) != h.study:
                raise InvalidInput("a series mixes studies")
        routed = [m for m in chosen if any(self.manifests[m].routes(h.modality, h.body_part)
                                           for h in headers)]
        if not routed:
            raise UnprocessableInput("no model takes the modality and body part of these "
                                     "instances")
        job_id = new_job_id()
        await asyncio.to_thread(self.spool.save_inputs, job_id, parts)
        job = await asyncio.to_thread(self.store.create, studies.pop(), routed, tenant,
                                      priority, "stow", job_id)
        self.runner.ensure_started()
        return Received(job, [(h.sop_class, h.sop_instance) for h in headers])

    async def get(self, job_id: str, tenant: str | None) -> Job:
        job = await asyncio.to_thread(self.store.get, job_id, tenant)
        if job is None:  # the same answer for another tenant's job
            raise ModelNotFound("no such job")
        return job

    async def result(self, job_id: str, sop_instance_uid: str, tenant: str | None) -> bytes:
        """A stored result of a job (kept by Medserve when the cluster has no PACS)."""
        await self.get(job_id, tenant)
        return await asyncio.to_thread(self.spool.result, job_id, sop_instance_uid)


def _headers(parts: list[bytes]) -> list[Header]:
    out = []
    for index, data in enumerate(parts):
        ds = read_header(data, f"part {index}: ")  # 400, or 413 for a deflate bomb
        try:
            study, series, sop_class, sop_instance = (
                str(ds[k].value) for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                           "SOPClassUID", "SOPInstanceUID"))
        except (KeyError, AttributeError):
            raise InvalidInput(f"part {index}: a DICOM instance without study, series and "
                               "SOP instance UIDs") from None
        if not all(_UID.fullmatch(u) and len(u) <= 64
                   for u in (study, series, sop_class, sop_instance)):
            raise InvalidInput(f"part {index}: a UID is malformed")
        out.append(Header(study, series, sop_class, sop_instance,
                          str(ds.get("Modality", "") or "").upper(),
                          str(ds.get("BodyPartExamined", "") or "").upper()))
    return out
