"""Study analysis jobs on the wire: `POST /v1/studies/{uid}/analyze` and `GET /v1/jobs/{id}`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

JobStatus = Literal["queued", "running", "done", "failed"]
# pacs: `analyze` pulls the study from the PACS; stow: it was sent to Medserve (STOW-RS)
JobSource = Literal["pacs", "stow"]


class AnalyzeRequest(BaseModel):
    models: list[str] | None = Field(
        None, description="Imaging models to run; default: every model the caller may use "
        "whose manifest accepts a series' modality."
    )


class JobResult(BaseModel):
    model: str
    version: str
    series_instance_uid: str = Field(description="The source series the result is about.")
    sop_instance_uid: str = Field(
        description="The DICOM SR: stored in the PACS, or (no PACS) at "
        "`/v1/jobs/{id}/results/{sop_instance_uid}`."
    )
    findings: int = Field(description="Findings in the result (groups in the SR).")


class JobSkip(BaseModel):
    model: str
    series_instance_uid: str
    reason: str = Field(description="Why this model did not run on this series.")


class Job(BaseModel):
    id: str
    study_instance_uid: str
    source: JobSource
    models: list[str]
    priority: str
    status: JobStatus
    attempts: int = Field(description="Runs started (a lost replica or a PACS outage adds one).")
    created: float = Field(description="Unix time the job was accepted.")
    updated: float
    results: list[JobResult] = Field(default_factory=list)
    skipped: list[JobSkip] = Field(default_factory=list)
    reason: str | None = Field(None, description="Why the job failed, or the last retry's cause.")
