"""The JSON body limit (413) bounds FastAPI's own body read while it streams; a body read has
its own deadline (408); headers are bounded (431) (no Ray)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel
from starlette.types import Message

from serving.errors import UploadTimeout
from serving.http.body import JSONBodyLimit, read_body
from serving.http.error_map import install_error_handlers
from serving.http.header_limits import MAX_HEADER_BYTES, MAX_HEADERS, HeaderLimits

LIMIT = 1024
PATH = "/v1/chat/completions"


class Body(BaseModel):
    text: str


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(JSONBodyLimit, limits={PATH: LIMIT})

    @app.middleware("http")  # as in the gateway: a BaseHTTPMiddleware outside the limit
    async def outer(request: Request, call_next: Any) -> Any:
        return await call_next(request)

    @app.post(PATH)
    async def chat(body: Body) -> dict[str, int]:
        return {"length": len(body.text)}

    @app.post("/other")
    async def other(body: Body) -> dict[str, int]:
        return {"length": len(body.text)}

    return app


def payload(size: int) -> bytes:
    return json.dumps({"text": "x" * size}).encode()


def test_under_the_limit_passes_and_other_routes_are_not_limited() -> None:
    client = TestClient(make_app())
    assert client.post(PATH, content=payload(100),
                       headers={"Content-Type": "application/json"}).json() == {"length": 100}
    assert client.post("/other", content=payload(5000),
                       headers={"Content-Type": "application/json"}).status_code == 200


def test_declared_oversize_is_413_in_the_openai_error_shape() -> None:
    r = TestClient(make_app()).post(PATH, content=payload(LIMIT),
                                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    error = r.json()["error"]
    assert error["type"] == "payload_too_large" and error["code"] == 413
    assert str(LIMIT) in error["message"]


def test_chunked_oversize_without_content_length_is_413() -> None:
    def chunks() -> Iterator[bytes]:
        body = payload(4 * LIMIT)
        for i in range(0, len(body), 256):
            yield body[i:i + 256]

    r = TestClient(make_app()).post(PATH, content=chunks(),
                                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "payload_too_large"


def test_body_is_refused_while_streaming_not_after_reading_it_all() -> None:
    body = payload(20 * 600)
    pieces = [body[i:i + 600] for i in range(0, len(body), 600)]
    pulled = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal pulled
        pulled += 1
        more = pulled < len(pieces)
        return {"type": "http.request", "body": pieces[pulled - 1], "more_body": more}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": PATH, "raw_path": PATH.encode(),
             "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
             "server": ("test", 80), "client": ("test", 1),
             "headers": [(b"content-type", b"application/json")]}
    asyncio.run(make_app()(scope, receive, send))
    assert sent[0]["status"] == 413
    assert pulled == 2  # the second 600-byte chunk crossed 1024 bytes: nothing more was read


def test_a_trickled_upload_gets_its_own_408_deadline_and_a_prompt_one_passes() -> None:
    """The body's arrival is timed apart from processing: a client still sending when
    `upload_timeout_s` runs out gets 408 (Medserve's error shape), however much it sent."""

    def request(pause_s: float, pieces: int) -> Request:
        sent = 0

        async def receive() -> Message:
            nonlocal sent
            await asyncio.sleep(pause_s)
            sent += 1
            return {"type": "http.request", "body": b"x" * 100, "more_body": sent < pieces}

        return Request({"type": "http", "method": "POST", "headers": []}, receive)

    with pytest.raises(UploadTimeout):
        asyncio.run(read_body(request(0.05, 10**6), 10**9, timeout_s=0.5))
    assert len(asyncio.run(read_body(request(0.01, 20), 10**9, timeout_s=5))) == 2000


def test_headers_are_bounded_in_count_and_bytes_with_the_api_error_shapes() -> None:
    app = FastAPI()

    @app.get("/v2/health/live")
    @app.get("/v1/models")
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    client = TestClient(HeaderLimits(app))
    assert client.get("/v2/health/live", headers={"x-a": "1" * 1000}).status_code == 200
    many = {f"x-h{i}": "1" for i in range(MAX_HEADERS + 1)}
    big = {"x-big": "1" * MAX_HEADER_BYTES}
    for headers in (many, big):
        r = client.get("/v2/health/live", headers=headers)
        assert r.status_code == 431 and isinstance(r.json()["error"], str), r.text
        r = client.get("/v1/models", headers=headers)
        assert r.status_code == 431 and r.json()["error"]["code"] == 431, r.text
