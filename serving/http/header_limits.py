"""A bound on request headers: how many, and how many bytes in all (431 beyond).

Serve's proxy (uvicorn with httptools) reads headers of any size and count: a 16 MiB header or
20,000 headers were answered 200, each copied through the proxy into the gateway's scope and
every handler that looks at them. No client of Medserve needs more than a few dozen small
headers. It runs in Serve's proxy, through the proxy's one extension point
($RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH, set by `medserve serve` and in the KubeRay pods),
and again first in the gateway app, for a proxy started without it.
"""

from __future__ import annotations

import json

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.protocol.openai import ROUTE_PREFIXES as OPENAI_ROUTES

MAX_HEADERS = 100
MAX_HEADER_BYTES = 32 << 10
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "serving.http.header_limits.proxy_middlewares"


def proxy_middlewares() -> list[Middleware]:
    """What Serve's proxy calls at start (PROXY_CALLBACK_ENV): its ASGI middlewares."""
    return [Middleware(HeaderLimits)]


class HeaderLimits:
    def __init__(self, app: ASGIApp, max_headers: int = MAX_HEADERS,
                 max_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_headers = max_headers
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope.get("headers", ())
            size = sum(len(k) + len(v) for k, v in headers)
            if len(headers) > self.max_headers or size > self.max_bytes:
                message = (f"request headers over the limit ({self.max_headers} headers, "
                           f"{self.max_bytes} bytes)")
                await _refuse(send, scope.get("path", ""), message)
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, path: str, message: str) -> None:
    error: object = message
    if path.startswith(OPENAI_ROUTES):  # the one error shape of each API
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": 431}
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": 431, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})
