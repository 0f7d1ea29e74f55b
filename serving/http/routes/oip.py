"""Open Inference Protocol v2 (KServe v2 / Triton HTTP) routes, binary tensor extension included."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

import serving
from serving.errors import InvalidInput, Unavailable
from serving.http.body import decompress, read_body
from serving.http.gateway_api import GatewayAPI
from serving.http.request_context import request_priority
from serving.protocol.headers import INFERENCE_HEADER_LENGTH as HEADER_LENGTH
from serving.protocol.oip import (
    encode_infer_response,
    parse_infer_request,
    select_outputs,
    validate_inputs,
)
from serving.schema.imaging import TensorSpec

router = APIRouter(tags=["Open Inference Protocol v2"])
# Bodies whose JSON part is at most this many bytes are parsed on the event loop.
INLINE_JSON_BYTES = 64 * 1024

BINARY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class Liveness(BaseModel):
    live: bool


class Readiness(BaseModel):
    ready: bool


def _gateway(request: Request) -> GatewayAPI:
    return request.app.state.gateway


@router.get("/v2/health/live", response_model=Liveness)
async def live() -> Liveness:
    return Liveness(live=True)


@router.get("/v2/health/ready", response_model=Readiness, responses={503: {}})
async def ready(request: Request) -> Readiness:
    gw = _gateway(request)
    # Every version that takes unpinned traffic (a canary too), not one picked at random.
    targets = gw.routed_targets()
    states = await asyncio.gather(*(gw.ready(t) for t in targets))
    if not all(states):
        raise Unavailable("not every model is ready", reason="not_ready")
    return Readiness(ready=True)


@router.get("/v2", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(
        name="medserve", version=serving.__version__, extensions=["binary_tensor_data"]
    )


@router.get("/v2/models/{model}", response_model=ModelMetadata, responses={404: {}})
@router.get("/v2/models/{model}/versions/{version}", response_model=ModelMetadata,
            responses={404: {}})
async def model_metadata(request: Request, model: str, version: str | None = None) -> ModelMetadata:
    target = _gateway(request).resolve(model, version)
    m = target.manifest
    return ModelMetadata(
        name=m.name,
        versions=[version] if version else [v.version for v in m.versions],
        platform=m.runtime(target.version),
        inputs=m.inputs,
        outputs=m.outputs,
    )


@router.get("/v2/models/{model}/config", responses={404: {}})
@router.get("/v2/models/{model}/versions/{version}/config", responses={404: {}})
async def model_config(request: Request, model: str, version: str | None = None) -> dict[str, Any]:
    """Triton's model configuration extension (`tritonclient`'s get_model_config)."""
    target = _gateway(request).resolve(model, version)
    m = target.manifest
    batched = m.inputs[0].shape[0] == -1  # Triton leaves the batch dimension out of dims

    def tensor(spec: TensorSpec) -> dict[str, Any]:
        dims = spec.shape[1:] if batched else spec.shape
        return {"name": spec.name, "data_type": f"TYPE_{spec.datatype}", "dims": dims}

    return {
        "name": m.name,
        "platform": m.runtime(target.version),
        "max_batch_size": m.batching.max_batch_size if batched else 0,
        "input": [tensor(t) for t in m.inputs],
        "output": [tensor(t) for t in m.outputs],
    }


@router.get("/v2/models/{model}/ready", response_model=Readiness, responses={404: {}, 503: {}})
@router.get("/v2/models/{model}/versions/{version}/ready", response_model=Readiness,
            responses={404: {}, 503: {}})
async def model_ready(request: Request, model: str, version: str | None = None) -> Readiness:
    gw = _gateway(request)
    if not await gw.ready(gw.resolve(model, version)):
        raise Unavailable(f"model {model!r} is not ready", reason="not_ready")
    return Readiness(ready=True)


@router.post("/v2/models/{model}/infer", openapi_extra=BINARY_BODY,
             responses={400: {}, 404: {}, 413: {}, 503: {}, 504: {}})
@router.post("/v2/models/{model}/versions/{version}/infer", openapi_extra=BINARY_BODY,
             responses={400: {}, 404: {}, 413: {}, 503: {}, 504: {}})
async def infer(request: Request, model: str, version: str | None = None) -> Response:
    gw = _gateway(request)
    target = gw.resolve(model, version)
    priority = request_priority(request)
    raw_length = request.headers.get(HEADER_LENGTH)
    if raw_length is not None and not raw_length.isdigit():
        raise InvalidInput(f"{HEADER_LENGTH} is not a non-negative integer")
    limit = gw.config.limits.max_tensor_bytes
    raw = await read_body(request, limit, gw.config.limits.upload_timeout_s)
    encoding = request.headers.get("content-encoding")
    length = int(raw_length) if raw_length is not None else None
    json_bytes = length if length is not None else len(raw)
    if encoding in (None, "identity") and json_bytes <= INLINE_JSON_BYTES:
        # A small JSON part (the binary extension's tensors are viewed, not copied) parses in
        # well under a millisecond: on the loop, without a thread handoff each way.
        parsed = parse_infer_request(raw, length)
    else:
        # Inflating and parsing up to `limit` bytes is CPU work: off the event loop, so health
        # checks and every other route keep answering meanwhile.
        parsed = await asyncio.to_thread(
            lambda: parse_infer_request(decompress(raw, encoding, limit), length))
    validate_inputs(parsed.inputs, target.manifest.inputs,
                    max_batch=target.manifest.batching.max_batch_size)
    outputs = await gw.call(target, "infer", parsed.inputs, priority=priority)
    content, headers = encode_infer_response(
        target.manifest.name, target.version, parsed.id, select_outputs(outputs, parsed)
    )
    return Response(content=content, headers=headers)
