"""Studies and the hospital's systems: analyse a study the PACS holds
(`POST /v1/studies/{uid}/analyze`, 202 and a job), take a study in over STOW-RS
(`POST /dicomweb/studies`), and follow a job (`GET /v1/jobs/{id}`). The work is
`serving.jobs`; this parses and delegates."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from serving.http.auth import allowed
from serving.http.body import related_parts
from serving.http.gateway_api import GatewayAPI
from serving.http.request_context import request_priority
from serving.jobs.service import Received, StudyJobs
from serving.protocol.jobs import AnalyzeRequest, Job

router = APIRouter(tags=["Studies"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {} for code in (400, 403, 404, 413, 415, 422, 429, 501, 503)
}
STOW_BODY = {"requestBody": {"required": True, "content": {"multipart/related": {
    "schema": {"type": "string", "format": "binary"},
    "description": 'type="application/dicom" and a boundary; each part one DICOM instance',
}}}}


def _jobs(request: Request) -> StudyJobs:
    gw: GatewayAPI = request.app.state.gateway
    return gw.jobs


def _tenant(request: Request) -> str | None:
    tenant = getattr(request.state, "tenant", None)
    return None if tenant is None else tenant.name


def _job_url(job: Job) -> str:
    return f"/v1/jobs/{job.id}"


@router.post("/v1/studies/{study_uid}/analyze", status_code=202, response_model=Job,
             response_model_exclude_none=True, responses=ERRORS)
async def analyze(request: Request, study_uid: str, body: AnalyzeRequest | None = None
                  ) -> JSONResponse:
    """Pull the study from the PACS (WADO-RS), run the models that take its series, and store
    each result back as a DICOM SR (STOW-RS). Answers 202 with the job; poll its URL."""
    job = await _jobs(request).submit(
        study_uid, body.models if body else None, _tenant(request), request_priority(request),
        lambda model: allowed(request, model),
    )
    return JSONResponse(job.model_dump(exclude_none=True), status_code=202,
                        headers={"Location": _job_url(job)})


def _stow_response(received: Received) -> JSONResponse:
    """PS3.18 10.5.3: the Referenced SOP Sequence of what was taken in, as DICOM JSON; the
    job that analyses it is the Content-Location."""
    referenced = [{"00081150": {"vr": "UI", "Value": [sop_class]},
                   "00081155": {"vr": "UI", "Value": [sop_instance]}}
                  for sop_class, sop_instance in received.instances]
    return JSONResponse({"00081199": {"vr": "SQ", "Value": referenced}},
                        media_type="application/dicom+json",
                        headers={"Content-Location": _job_url(received.job)})


@router.post("/dicomweb/studies", responses=ERRORS, openapi_extra=STOW_BODY)
@router.post("/dicomweb/studies/{study_uid}", responses=ERRORS, openapi_extra=STOW_BODY)
async def stow(request: Request, study_uid: str | None = None) -> JSONResponse:
    """STOW-RS from a modality or a DICOM router: one study's instances. The models whose
    manifest takes a series' modality and body part run on it; their DICOM SRs go to the PACS
    (or stay with the job when the cluster has none)."""
    jobs = _jobs(request)
    parts = await related_parts(request, request.app.state.gateway.config.limits)
    received = await jobs.receive(parts, study_uid, _tenant(request),
                                  request_priority(request),
                                  lambda model: allowed(request, model))
    return _stow_response(received)


@router.get("/v1/jobs/{job_id}", response_model=Job, response_model_exclude_none=True,
            responses=ERRORS)
async def job(request: Request, job_id: str) -> Job:
    """A study job: queued, running, done (with its results' SOP Instance UIDs) or failed
    (with a reason)."""
    return await _jobs(request).get(job_id, _tenant(request))


@router.get("/v1/jobs/{job_id}/results/{sop_instance_uid}", responses=ERRORS,
            response_class=Response)
async def job_result(request: Request, job_id: str, sop_instance_uid: str) -> Response:
    """A job's DICOM SR, kept by Medserve when the cluster has no PACS to store it in."""
    data = await _jobs(request).result(job_id, sop_instance_uid, _tenant(request))
    return Response(data, media_type="application/dicom")
