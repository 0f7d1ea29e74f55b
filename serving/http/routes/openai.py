"""OpenAI-compatible routes: `POST /v1/chat/completions` (plain and SSE) and `GET /v1/models`.

The official `openai` client works unchanged. Routes parse and delegate to the LLM deployment;
errors get OpenAI's body shape from serving/api/errors.py. Every reply is marked as decision
support: the `X-Decision-Support` header and a `decision_support` field (clients keep unknown
fields: `completion.decision_support` in the `openai` client).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from serving.errors import MedserveError
from serving.gateway.targets import LLMTarget
from serving.http.auth import allowed, authorize
from serving.http.gateway_api import GatewayAPI
from serving.http.request_context import request_priority
from serving.http.request_metrics import note_model
from serving.protocol.headers import DECISION_SUPPORT as HEADER

router = APIRouter(tags=["OpenAI-compatible chat"])

DECISION_SUPPORT = (
    "Decision support only: generated text may be wrong or incomplete; a clinician must review "
    "it and makes the final decision."
)
ERRORS: dict[int | str, dict[str, Any]] = {c: {} for c in (400, 404, 503, 504)}
CREATED = int(time.time())  # `created` of /v1/models entries: when this gateway started


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def plain(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "\n".join(
            p.text for p in self.content
        )
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(Strict):
    include_usage: bool = False


class ChatCompletionRequest(Strict):
    model: str = Field(description="`clinical-llm` or `clinical-llm:<adapter>`.")
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="Completion token cap.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Alias of max_tokens.")
    temperature: float = Field(1.0, ge=0, le=2, description="0 is greedy decoding.")
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = Field(None, description="Up to 4 stop strings.")
    seed: int | None = Field(None, description="Reproducible sampling for the same request.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="Only one choice is generated.")
    presence_penalty: float = Field(0.0, ge=0, le=0, description="Not supported: only 0.")
    frequency_penalty: float = Field(0.0, ge=0, le=0, description="Not supported: only 0.")
    user: str | None = Field(None, description="Accepted and ignored (never logged).")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    def for_engine(self) -> dict[str, Any]:
        return {
            "messages": [m.plain() for m in self.messages],
            "max_tokens": self.max_completion_tokens or self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": self.stop or [],  # validators skip the default None
        }


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class DecisionSupport(BaseModel):
    notice: str = DECISION_SUPPORT
    model_version: str = Field(description="Version of the base model that answered.")
    intended_use: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    decision_support: DecisionSupport


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = CREATED
    owned_by: str = "medserve"
    root: str
    parent: str | None = None
    description: str = ""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


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

