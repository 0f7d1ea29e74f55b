"""Study analysis with the PACS: `POST /v1/studies/{uid}/analyze` (202 and a job) and
`GET /v1/jobs/{id}`. The work is `serving.jobs`; this parses and delegates."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serving.errors import NotConfigured
from serving.http.auth import allowed
from serving.http.gateway_api import GatewayAPI
from serving.http.request_context import request_priority
from serving.jobs.service import StudyJobs
from serving.protocol.jobs import AnalyzeRequest, Job

router = APIRouter(tags=["Studies"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {} for code in (400, 403, 404, 413, 422, 429, 501, 503)
}


def _jobs(request: Request) -> StudyJobs:
    gw: GatewayAPI = request.app.state.gateway
    if gw.jobs is None:
        raise NotConfigured("study analysis needs a PACS: set `pacs:` in medserve.yaml")
    return gw.jobs


def _tenant(request: Request) -> str | None:
    tenant = getattr(request.state, "tenant", None)
    return None if tenant is None else tenant.name


@router.post("/v1/studies/{study_uid}/analyze", status_code=202, response_model=Job,
             response_model_exclude_none=True, responses=ERRORS)
async def analyze(request: Request, study_uid: str, body: AnalyzeRequest | None = None
                  ) -> JSONResponse:
    """Pull the study from the PACS (WADO-RS), run the models that take its series, and store
    each result back as a DICOM SR (STOW-RS). Answers 202 with the job; poll its URL."""
    jobs = _jobs(request)
    job = await jobs.submit(
        study_uid, body.models if body else None, _tenant(request), request_priority(request),
        lambda model: allowed(request, model),
    )
    url = f"/v1/jobs/{job.id}"
    return JSONResponse(job.model_dump(exclude_none=True), status_code=202,
                        headers={"Location": url})


@router.get("/v1/jobs/{job_id}", response_model=Job, response_model_exclude_none=True,
            responses=ERRORS)
async def job(request: Request, job_id: str) -> Job:
    """A study job: queued, running, done (with the stored SRs' SOP Instance UIDs) or failed
    (with a reason)."""
    return await _jobs(request).get(job_id, _tenant(request))
