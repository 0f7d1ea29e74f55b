"""Imaging predict route: a DICOM instance, a PNG, or a DICOM series in; findings out."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from serving.errors import UnsupportedMediaType
from serving.http.body import media_type, study_parts
from serving.http.gateway_api import GatewayAPI
from serving.http.request_context import request_priority
from serving.imaging.pipeline import Payload
from serving.protocol.imaging import PredictResponse

router = APIRouter(tags=["Imaging"])

_BINARY = {"schema": {"type": "string", "format": "binary"}}
STUDY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/dicom": _BINARY,
            "image/png": _BINARY,
            "application/zip": _BINARY,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": _BINARY}},
                }
            },
        },
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {} for code in (400, 404, 413, 415, 422, 429, 503, 504)
}


@router.post("/v1/imaging/{model}/predict", response_model=PredictResponse,
             response_model_exclude_none=True, openapi_extra=STUDY_BODY, responses=ERRORS)
@router.post("/v1/imaging/{model}/versions/{version}/predict", response_model=PredictResponse,
             response_model_exclude_none=True, openapi_extra=STUDY_BODY, responses=ERRORS)
async def predict(request: Request, model: str, version: str | None = None) -> PredictResponse:
    start = time.perf_counter()
    gw: GatewayAPI = request.app.state.gateway
    target = gw.resolve(model, version)
    priority = request_priority(request)
    manifest = target.manifest
    ctype = media_type(request)
    if ctype not in manifest.content_types:
        raise UnsupportedMediaType(
            f"{model} accepts {', '.join(manifest.content_types)}; got "
            + ("another content type" if ctype else "no content type")
        )
    parts = await study_parts(request, ctype, gw.config.limits)
    result = await gw.call(target, "predict", Payload(ctype, parts), priority=priority)
    result["timings_ms"]["total"] = round((time.perf_counter() - start) * 1e3, 3)
    return PredictResponse(
        model=manifest.name,
        version=target.version,
        request_id=request.state.request_id,
        task=manifest.task,
        intended_use=manifest.intended_use,
        **result,
    )
