"""The one mapping from exceptions to HTTP responses.

OIP and imaging routes answer `{"error": "..."}`; OpenAI-compatible routes answer
`{"error": {"message", "type", "param", "code"}}`. Unexpected exceptions become a bare 500:
their text may hold request content, so it is neither returned nor logged.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from serving.errors import MedserveError, PayloadTooLarge, UnsupportedMediaType
from serving.http.auth import auth_error
from serving.http.request_metrics import CLIENT_CLOSED, note_error
from serving.protocol.openai import ROUTE_PREFIXES as OPENAI_ROUTES

log = logging.getLogger("ray.serve")

# Starlette's and FastAPI's own HTTPExceptions (e.g. the body limit's 413) get the type the
# matching domain error has, so clients and the errors metric see one vocabulary.
HTTP_ERROR_TYPES = {413: PayloadTooLarge.error_type, 415: UnsupportedMediaType.error_type}


def _is_openai(request: Request) -> bool:
    return request.url.path.startswith(OPENAI_ROUTES)


def error_response(
    request: Request, status: int, message: str, error_type: str,
    retry_after_s: float | None = None, param: str | None = None,
    shed_reason: str | None = None,
) -> JSONResponse:
    note_error(request, status, error_type, shed_reason)
    headers = {}
    if status in (429, 503) or retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s or 1)))
    if status == 401:  # RFC 6750: say which scheme to authenticate with
        headers["WWW-Authenticate"] = 'Bearer realm="medserve"'
    body: dict[str, object]
    if _is_openai(request):
        body = {"error": {"message": message, "type": error_type, "param": param, "code": status}}
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status, headers=headers)


def _domain_response(request: Request, exc: MedserveError) -> JSONResponse:
    return error_response(request, exc.status_code, exc.message, exc.error_type,
                          exc.retry_after_s, shed_reason=exc.shed_reason)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MedserveError)
    async def domain(request: Request, exc: MedserveError) -> JSONResponse:
        return _domain_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        if (denied := await auth_error(request)) is not None:
            return _domain_response(request, denied)
        # Only the location and pydantic's message: the offending input value is not echoed,
        # and neither is a key the client made up (the last part of an unknown field's path).
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = list(first.get("loc", ()))
        if first.get("type") == "extra_forbidden" and loc:
            loc[-1] = "(unknown field)"
        where = ".".join(str(p) for p in loc)
        return error_response(request, 400, f"{where}: {first['msg']}", "invalid_request_error")

    @app.exception_handler(HTTPException)
    async def http(request: Request, exc: HTTPException) -> JSONResponse:
        if (denied := await auth_error(request)) is not None:  # e.g. a JSON body's 413
            return _domain_response(request, denied)
        error_type = HTTP_ERROR_TYPES.get(exc.status_code, "invalid_request_error")
        return error_response(request, exc.status_code, str(exc.detail), error_type)

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # A flaky clinic network, not a server fault: 499 (outside the availability SLO), and
        # a debug line rather than an error that pages.
        log.debug("client closed %s mid-request", request.url.path)
        return error_response(request, CLIENT_CLOSED, "client closed the request",
                              "client_closed")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = getattr(request.state, "request_id", "-")
        log.error("unhandled %s on %s (request %s)", type(exc).__name__, request.url.path, rid)
        return error_response(request, 500, "internal error", "internal_error")
