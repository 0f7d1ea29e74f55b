"""OpenAI-compatible routes: `POST /v1/chat/completions` (plain and SSE) and `GET /v1/models`.

The official `openai` client works unchanged. Routes parse and delegate to the LLM deployment;
errors get OpenAI's body shape from serving/http/error_map.py; the wire types are in
serving/protocol/openai.py. Every reply is marked as decision support: the `X-Decision-Support`
header and a `decision_support` field.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from serving.errors import MedserveError
from serving.gateway.targets import LLMTarget
from serving.http.auth import allowed, authorize
from serving.http.gateway_api import GatewayAPI
from serving.http.request_context import request_priority
from serving.http.request_metrics import note_model
from serving.protocol.headers import DECISION_SUPPORT as HEADER
from serving.protocol.openai import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    DecisionSupport,
    ModelCard,
    ModelList,
    Usage,
)

router = APIRouter(tags=["OpenAI-compatible chat"])

ERRORS: dict[int | str, dict[str, Any]] = {c: {} for c in (400, 404, 503, 504)}


def _gateway(request: Request) -> GatewayAPI:
    return request.app.state.gateway


def _cards(gw: GatewayAPI) -> list[ModelCard]:
    cards = []
    for m in gw.llm_manifests.values():
        cards.append(ModelCard(id=m.name, root=m.name, description=m.description))
        cards += [ModelCard(id=f"{m.name}:{a.name}", root=m.name, parent=m.name,
                            description=a.description) for a in m.adapters]
    return cards


def _note_model(request: Request, model: str) -> None:
    # Metrics label the base model (adapters have their own label on the LLM's metrics);
    # names outside the repository become `unknown` there, never the client's text.
    note_model(request, model.partition(":")[0])


def _decision(target: LLMTarget) -> DecisionSupport:
    return DecisionSupport(model_version=target.version,
                           intended_use=target.manifest.intended_use)


def _headers(target: LLMTarget) -> dict[str, str]:
    return {HEADER: f"{target.model_id} v{target.version}; not a diagnosis; clinician decides"}


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    # With auth on, a tenant sees only the models it may call.
    return ModelList(data=[c for c in _cards(_gateway(request)) if allowed(request, c.id)])


@router.get("/v1/models/{model}", response_model=ModelCard, responses={404: {}})
async def get_model(request: Request, model: str) -> ModelCard:
    gw = _gateway(request)
    _note_model(request, model)
    gw.resolve_llm(model)  # 404 in OpenAI's shape for anything unknown
    return next(c for c in _cards(gw) if c.id == model)


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=ERRORS)
async def chat_completions(
    request: Request, body: ChatCompletionRequest, response: Response
) -> ChatCompletion | StreamingResponse:
    gw = _gateway(request)
    _note_model(request, body.model)
    authorize(request, body.model)  # before resolving: a 403 says nothing about existence
    target = gw.resolve_llm(body.model)
    body.check_prompt_size(target.manifest.engine.context_window)
    priority = request_priority(request)
    completion_id = f"chatcmpl-{request.state.request_id}"
    if body.stream:
        events = await gw.stream(target, "chat_stream", body.for_engine(), priority=priority)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        sse = _sse(events, completion_id, body.model, include_usage)
        return StreamingResponse(sse, media_type="text/event-stream", headers=_headers(target))
    result = await gw.call(target, "chat", body.for_engine(), priority=priority)
    response.headers.update(_headers(target))
    prompt, completion = result["prompt_tokens"], result["completion_tokens"]
    return ChatCompletion(
        id=completion_id, created=int(time.time()), model=body.model,
        choices=[Choice(message=AssistantMessage(content=result["text"]),
                        finish_reason=result["finish_reason"])],
        usage=Usage(prompt_tokens=prompt, completion_tokens=completion,
                    total_tokens=prompt + completion),
        decision_support=_decision(target),
    )


def _data(payload: dict[str, Any] | str) -> str:
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {text}\n\n"


async def _sse(
    events: AsyncIterator[dict[str, Any]], completion_id: str, model: str, include_usage: bool
) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": completion_id, "object": "chat.completion.chunk", "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if include_usage:
            out["usage"] = None
        return out

    yield _data(chunk({"role": "assistant", "content": ""}))
    try:
        async for event in events:
            if event["type"] == "delta":
                yield _data(chunk({"content": event["text"]}))
            elif event["type"] == "end":
                yield _data(chunk({}, event["finish_reason"]))
                if include_usage:
                    p, c = event["prompt_tokens"], event["completion_tokens"]
                    yield _data({
                        "id": completion_id, "object": "chat.completion.chunk",
                        "created": created, "model": model, "choices": [],
                        "usage": {"prompt_tokens": p, "completion_tokens": c,
                                  "total_tokens": p + c},
                    })
    except MedserveError as exc:  # the status line is sent: report in-band, as OpenAI does
        yield _data({"error": {"message": exc.message, "type": exc.error_type, "param": None,
                               "code": exc.status_code}})
    except Exception:
        yield _data({"error": {"message": "internal error", "type": "internal_error",
                               "param": None, "code": 500}})
    finally:
        # A client that disconnects closes this generator: close the replica's stream now,
        # which cancels generation and frees the sequence's batch slot and KV pages.
        await events.aclose()  # type: ignore[attr-defined]
    yield _data("[DONE]")

