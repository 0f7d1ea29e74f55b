"""Imaging predict route: a DICOM instance, a PNG, or a DICOM series in; findings out."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Query, Request, Response

from serving.errors import NotAcceptable, UnsupportedMediaType
from serving.http.body import media_type, study_parts
from serving.http.gateway_api import GatewayAPI
from serving.http.request_context import request_priority
from serving.imaging.pipeline import Payload
from serving.protocol.imaging import PredictResponse
from serving.protocol.results import ResultFormat, for_task, negotiate

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
    code: {} for code in (400, 404, 406, 413, 415, 422, 429, 503, 504)
}
ERRORS[200] = {"content": {
    "application/dicom": {"schema": {"type": "string", "format": "binary"},
                          "description": "DICOM Comprehensive (3D) SR, TID 1500"},
    "application/fhir+json": {"schema": {"type": "object"},
                              "description": "FHIR R4 DiagnosticReport"},
}}
FORMAT = Query(
    None, description="Result format: json (default), dicom-sr (dicom-seg for a segmentation "
    "model) or fhir; overrides Accept."
)


@router.post("/v1/imaging/{model}/predict", response_model=PredictResponse,
             response_model_exclude_none=True, openapi_extra=STUDY_BODY, responses=ERRORS)
@router.post("/v1/imaging/{model}/versions/{version}/predict", response_model=PredictResponse,
             response_model_exclude_none=True, openapi_extra=STUDY_BODY, responses=ERRORS)
async def predict(
    request: Request, model: str, version: str | None = None, format: str | None = FORMAT
) -> PredictResponse | Response:
    start = time.perf_counter()
    gw: GatewayAPI = request.app.state.gateway
    target = gw.resolve(model, version)
    priority = request_priority(request)
    manifest = target.manifest
    result_format = for_task(negotiate(format, request.headers.get("accept")), manifest.task,
                             explicit=format is not None)
    ctype = media_type(request)
    if ctype not in manifest.content_types:
        raise UnsupportedMediaType(
            f"{model} accepts {', '.join(manifest.content_types)}; got "
            + ("another content type" if ctype else "no content type")
        )
    if result_format is ResultFormat.DICOM_SR and ctype == "image/png":
        raise NotAcceptable("a DICOM SR result needs DICOM input: a PNG names no patient, "
                            "study or instance to reference")
    parts = await study_parts(request, ctype, gw.config.limits)
    result = await gw.call(
        target, "predict", Payload(ctype, parts, result_format), priority=priority
    )
    encoded = result.pop("encoded", None)
    if encoded is not None:
        return Response(encoded, media_type=result_format.media_type)
    result["timings_ms"]["total"] = round((time.perf_counter() - start) * 1e3, 3)
    return PredictResponse(
        model=manifest.name,
        version=target.version,
        request_id=request.state.request_id,
        task=manifest.task,
        intended_use=manifest.intended_use,
        **result,
    )
