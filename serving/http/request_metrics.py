"""Request metrics: one ASGI middleware records every response once.

It sits outside every route and handler, so it times the whole exchange (to the last byte of
a streamed body) and sees the final status, including the 500 that Starlette writes for an
unhandled exception. Label values come from the repository and the route templates only; the
error mapping (`serving.http.error_map`) tells it the error type and why a request was shed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.gateway.audit import AuditLog
from serving.http.gateway_api import GatewayAPI
from serving.observability.metrics import (
    UNMATCHED,
    GatewayMetrics,
    ModelLabels,
    latency_buckets,
    priority_label,
)
from serving.protocol.headers import PRIORITY as PRIORITY_HEADER
from serving.repository.store import Repository

SHED_REASONS = {429: "rate_limited", 503: "unavailable", 504: "queue_timeout"}
CLIENT_CLOSED = 499  # nginx's code for a client that went away before the answer
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_ERROR = "medserve_error"
_MODEL = "medserve_model"


def note_error(request: Request, status: int, error_type: str, shed_reason: str | None) -> None:
    """Called by the error mapping for every error response it writes."""
    reason = (shed_reason or SHED_REASONS[status]) if status in SHED_REASONS else None
    setattr(request.state, _ERROR, (error_type, reason))


def note_model(request: Request, model: str | None, version: str | None = None) -> None:
    """For routes that find the model in the body rather than the path (OpenAI). The names are
    mapped to repository values (or `unknown`) before they become labels."""
    setattr(request.state, _MODEL, (model, version))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class RequestMetrics:
    def __init__(
        self, app: ASGIApp, metrics: GatewayMetrics, labels: Callable[[], ModelLabels],
        audit: AuditLog | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.labels = labels  # the repository's names now: models load at run time
        self.audit = audit  # the audit trail reuses the labels computed here

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: int | None = None

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except asyncio.CancelledError:
            status = status or CLIENT_CLOSED
            raise
        except Exception:
            status = status or 500  # Starlette's outermost handler answers 500 after us
            raise
        finally:
            self._record(scope, status or 500, time.perf_counter() - start)

    def _record(self, scope: Scope, status: int, duration_s: float) -> None:
        state = scope.get("state") or {}
        params = scope.get("path_params") or {}
        model, version = self.labels()(*state.get(_MODEL, (params.get("model"),
                                                         params.get("version"))))
        error_type, shed_reason = state.get(_ERROR, (None, None))
        if error_type is None and status >= 500:
            error_type = "internal_error"
        route = getattr(scope.get("route"), "path", None) or UNMATCHED
        self.metrics.record(
            model=model, version=version,
            route=route,
            status=status,
            # The effective priority (capped by the tenant) once a route has parsed it.
            priority=state.get("priority")
            or priority_label(_header(scope, PRIORITY_HEADER.lower().encode())),
            duration_s=duration_s, error_type=error_type, shed_reason=shed_reason,
        )
        if self.audit is not None:
            tenant = state.get("tenant")
            method = scope.get("method", "")
            self.audit.record(
                tenant=getattr(tenant, "name", None), model=model, version=version,
                route=route, method=method if method in _METHODS else "other",
                status=status, latency_s=duration_s, request_id=state.get("request_id"),
            )


def install_metrics(app: FastAPI, gateway: GatewayAPI) -> None:
    """Add the middleware last so it is the outermost one: it times everything else."""
    metrics = GatewayMetrics(latency_buckets(gateway.repo.all_manifests.values()))
    built: list[tuple[Repository, ModelLabels]] = []

    def labels() -> ModelLabels:  # built again only when the gateway reads the repository
        repo = gateway.repo
        if not built or built[0][0] is not repo:
            built[:] = [(repo, ModelLabels.from_manifests(repo.all_manifests.values()))]
        return built[0][1]

    app.add_middleware(RequestMetrics, metrics=metrics, labels=labels,
                       audit=AuditLog.from_config(gateway.config.audit))
