"""HTTP header names of Medserve's API, in one place.

HTTP compares them case-insensitively (Starlette's `request.headers` too); raw ASGI scopes carry
them lower-case, so middleware compares `name.lower().encode()`.
"""

from __future__ import annotations

PRIORITY = "x-priority"  # request: stat | urgent | routine (serving.protocol.priority)
REQUEST_ID = "x-request-id"  # response: the id in the body and the audit trail
RETRY_AFTER = "retry-after"  # response to a 429/503: seconds before trying again
DECISION_SUPPORT = "X-Decision-Support"  # chat response: model, version, "clinician decides"
# OIP binary tensor extension: length of the JSON header that precedes the raw tensor bytes.
INFERENCE_HEADER_LENGTH = "Inference-Header-Content-Length"  # as Triton spells it
