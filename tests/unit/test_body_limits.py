"""The JSON body limit (413) bounds FastAPI's own body read while it streams (no Ray)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel
from starlette.types import Message

from serving.http.body import JSONBodyLimit
from serving.http.error_map import install_error_handlers

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
