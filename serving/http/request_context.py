"""What a route reads off the request once and leaves on `request.state` for the middleware
that records it (metrics, audit)."""

from __future__ import annotations

from starlette.requests import Request

from serving.protocol.headers import PRIORITY as PRIORITY_HEADER
from serving.protocol.priority import Priority, parse_priority


def request_priority(request: Request) -> Priority:
    """Parse a Starlette request's priority and remember it on `request.state.priority`, where
    the metrics middleware reads the effective (capped) value for its `priority` label."""
    state = request.state
    priority = parse_priority(
        request.headers.get(PRIORITY_HEADER), getattr(state, "tenant", None)
    )
    state.priority = priority.label
    return priority
