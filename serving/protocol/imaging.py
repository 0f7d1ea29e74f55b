"""The imaging predict reply: findings, timings, and the clinical statements every result
carries (model and version, intended use, decision-support notice)."""

from __future__ import annotations

from pydantic import BaseModel, Field

DECISION_SUPPORT = (
    "Decision support only: a clinician must review the images and makes the final decision."
)


class Finding(BaseModel):
    label: str = Field(description="Finding label, from the model's manifest.")
    probability: float | None = Field(None, description="Classifier probability in [0, 1].")
    score: float | None = Field(None, description="Detection score in [0, 1].")
    centre_mm: list[float] | None = Field(
        None, description="Candidate centre in DICOM patient coordinates (LPS, mm)."
    )
    diameter_mm: float | None = Field(None, description="Estimated candidate diameter (mm).")
    voxels: int | None = Field(None, description="Segmented voxels on the model's grid.")
    volume_ml: float | None = Field(None, description="Segmented volume (mL).")


class Timings(BaseModel):
    queue: float = Field(description="Wait for a batch slot at the model replica (ms).")
    preprocess: float = Field(description="Decode and preprocessing (ms).")
    inference: float = Field(description="Model forward pass of the batch (ms).")
    postprocess: float = Field(description="Turning outputs into findings (ms).")
    total: float = Field(description="Time inside Medserve, gateway to reply (ms).")


class PredictResponse(BaseModel):
    model: str
    version: str
    request_id: str
    task: str
    findings: list[Finding]
    timings_ms: Timings
    intended_use: str
    decision_support: str = DECISION_SUPPORT
