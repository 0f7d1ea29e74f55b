"""Study jobs as the gateway offers them: accept (`submit`), look up (`get`), and run them in
the background (serving/jobs/runner.py) through the gateway's own admission control, so a
job's predictions queue and shed by priority like any request of its tenant.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from serving.dicomweb.pacs import Pacs
from serving.errors import Forbidden, InvalidInput, ModelNotFound
from serving.imaging.pipeline import Payload
from serving.jobs.analysis import analyze_study
from serving.jobs.runner import JobRunner
from serving.jobs.store import JobStore
from serving.protocol.jobs import Job, JobResult, JobSkip
from serving.protocol.priority import Priority
from serving.schema.cluster import ClusterConfig, PacsConfig
from serving.schema.imaging import ModelManifest

STORE_FILE = "medserve_jobs.sqlite"
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
# model, payload, priority -> (version, predict result)
RouterPredict = Callable[[str, Payload, Priority], Awaitable[tuple[str, dict[str, Any]]]]


def default_store_path() -> Path:
    """In the Ray session directory, next to Serve's logs: it outlives replicas."""
    try:
        from ray.serve._private.logging_utils import get_serve_logs_dir

        return Path(get_serve_logs_dir()).parent.parent / STORE_FILE
    except ImportError:  # pragma: no cover - Serve moved its helper
        return Path(STORE_FILE)


class StudyJobs:
    def __init__(
        self, pacs_config: PacsConfig, config: ClusterConfig,
        manifests: Mapping[str, ModelManifest], predict: RouterPredict,
    ) -> None:
        self.manifests = manifests
        self.pacs = Pacs(pacs_config, config.limits)
        path = config.jobs.store_path
        self.store = JobStore(Path(path) if path else default_store_path())
        self._predict = predict
        self.runner = JobRunner(self.store, config.jobs, self._analyze,
                                retry_delay_s=pacs_config.backoff_s * 4)

    async def _analyze(self, job: Job, tenant: str | None
                       ) -> tuple[list[JobResult], list[JobSkip]]:
        priority = Priority.from_label(job.priority)
        return await analyze_study(
            job.study_instance_uid, job.models, self.manifests, self.pacs,
            lambda model, payload: self._predict(model, payload, priority),
        )

    def _models(self, asked: Sequence[str] | None, may_use: Callable[[str], bool]) -> list[str]:
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
                     priority: Priority, may_use: Callable[[str], bool]) -> Job:
        """Accept a job once the PACS has the study (404 if not, 503 if the PACS is away).
        `may_use` is the caller's allow-list (auth off: everything)."""
        if len(study_uid) > 64 or not _UID.fullmatch(study_uid):
            raise InvalidInput("StudyInstanceUID must be a DICOM UID (digits and dots, at most "
                               "64 characters)")
        chosen = self._models(models, may_use)
        await asyncio.to_thread(self.pacs.series, study_uid)
        job = await asyncio.to_thread(self.store.create, study_uid, chosen, tenant, priority)
        self.runner.ensure_started()
        return job

    async def get(self, job_id: str, tenant: str | None) -> Job:
        job = await asyncio.to_thread(self.store.get, job_id, tenant)
        if job is None:  # the same answer for another tenant's job
            raise ModelNotFound("no such job")
        return job
