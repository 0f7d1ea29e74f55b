"""HTTP header names of Medserve's API, in one place.

HTTP compares them case-insensitively (Starlette's `request.headers` too); raw ASGI scopes carry
them lower-case, so middleware compares `name.lower().encode()`.
"""

from __future__ import annotations

import re
import uuid

PRIORITY = "x-priority"  # request: stat | urgent | routine (serving.protocol.priority)
REQUEST_ID = "x-request-id"  # response: the id in the body and the audit trail
RETRY_AFTER = "retry-after"  # response to a 429/503: seconds before trying again
DECISION_SUPPORT = "X-Decision-Support"  # chat response: model, version, "clinician decides"
# OIP binary tensor extension: length of the JSON header that precedes the raw tensor bytes.
INFERENCE_HEADER_LENGTH = "Inference-Header-Content-Length"  # as Triton spells it

# A client's X-Request-ID is adopted only as a bounded token: it reaches the body, the audit
# trail and log lines, so free text (log-line forgery, 30 KB ids) is replaced by a fresh id.
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def accepted_request_id(value: str | None) -> str:
    """The id Medserve records for a request: the one Serve's proxy took (the client's
    X-Request-ID, or its own) when it is at most 64 letters, digits and `._:-`, else a fresh
    one."""
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex
