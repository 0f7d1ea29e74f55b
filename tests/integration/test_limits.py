"""Every POST route refuses a body over its configured limit with 413, by Content-Length and
while streaming a chunked upload that declares no length."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import TEST_LIMITS, Server

CHUNK = 64 << 10
ROUTES = [
    ("/v1/imaging/cxr-triage/predict", "application/dicom", "max_instance_bytes"),
    ("/v1/imaging/cxr-triage/versions/1/predict", "image/png", "max_instance_bytes"),
    ("/v1/imaging/lung-nodule-ct/predict", "application/zip", "max_series_bytes"),
    ("/v1/imaging/lung-nodule-ct/predict", "multipart/form-data; boundary=b0undary",
     "max_series_bytes"),
    ("/v2/models/cxr-triage/infer", "application/octet-stream", "max_tensor_bytes"),
    ("/v2/models/cxr-triage/versions/1/infer", "application/json", "max_tensor_bytes"),
    ("/v1/chat/completions", "application/json", "max_chat_bytes"),
]


def _chunks(total: int) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(CHUNK, total - sent)
        sent += piece
        yield b"0" * piece


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(("path", "ctype", "limit_key"), ROUTES,
                         ids=[f"{p.split('/')[-2]}-{c.split(';')[0]}" for p, c, _ in ROUTES])
def test_body_over_the_route_limit_is_413(
    server: Server, path: str, ctype: str, limit_key: str, chunked: bool
) -> None:
    limit = TEST_LIMITS[limit_key]
    size = limit + 1 if not chunked else limit + CHUNK
    content: bytes | Iterator[bytes] = _chunks(size) if chunked else b"0" * size
    r = httpx.post(server.url + path, content=content, headers={"Content-Type": ctype},
                   timeout=120)
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert str(limit) in message
    if isinstance(error, dict):  # the OpenAI shape on the chat route
        assert error["type"] == "payload_too_large" and error["code"] == 413


def test_chat_body_under_the_limit_is_served(server: Server) -> None:
    padding = "x" * (TEST_LIMITS["max_chat_bytes"] // 2)
    r = httpx.post(f"{server.url}/v1/chat/completions", timeout=120, json={
        "model": "clinical-llm", "max_tokens": 2, "user": padding,
        "messages": [{"role": "user", "content": "cough"}]})
    assert r.status_code == 200, r.text
