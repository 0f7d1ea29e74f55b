"""Domain errors, and the one place that maps them to HTTP status codes.

Every error message here is written by Medserve itself: it never echoes request content,
DICOM attribute values or exception text from a parser, so no patient data can reach an
error body or a log line through it.
"""

from __future__ import annotations


class MedserveError(Exception):
    """Base class: ``status_code`` is the HTTP status, ``message`` is safe to show a client."""

    status_code: int = 500
    error_type: str = "internal_error"
    # Why a request was shed (429/503/504): a fixed word for the requests-shed metric.
    shed_reason: str | None = None

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        if reason is not None:
            self.shed_reason = reason

    def __reduce__(self):  # keep subclasses picklable across Ray actor boundaries
        return (_rebuild, (type(self), self.message, self.retry_after_s, self.shed_reason))


def _rebuild(
    cls: type[MedserveError], message: str, retry_after_s: float | None, reason: str | None
) -> MedserveError:
    return cls(message, retry_after_s=retry_after_s, reason=reason)


class InvalidInput(MedserveError):
    """Malformed request: not DICOM, corrupt, truncated, wrong tensor shape or datatype."""

    status_code = 400
    error_type = "invalid_request_error"


class PayloadTooLarge(MedserveError):
    status_code = 413
    error_type = "payload_too_large"


class UnsupportedMediaType(MedserveError):
    status_code = 415
    error_type = "unsupported_media_type"


class NotAcceptable(MedserveError):
    """The client asked for a result format this route or this input cannot give."""

    status_code = 406
    error_type = "not_acceptable"


class UnprocessableInput(MedserveError):
    """Well-formed input the model cannot take, e.g. a modality it does not accept."""

    status_code = 422
    error_type = "unprocessable_entity"


class Unauthorized(MedserveError):
    status_code = 401
    error_type = "authentication_error"


class Forbidden(MedserveError):
    status_code = 403
    error_type = "permission_error"


class ModelNotFound(MedserveError):
    status_code = 404
    error_type = "not_found_error"


class RateLimited(MedserveError):
    status_code = 429
    error_type = "rate_limit_exceeded"
    shed_reason = "rate_limited"


class Unavailable(MedserveError):
    """Overloaded or not ready: retryable, always sent with ``Retry-After``."""

    status_code = 503
    error_type = "service_unavailable"
    shed_reason = "unavailable"


class UploadTimeout(MedserveError):
    """The body did not arrive within `limits.upload_timeout_s` (a stalled or far too slow
    client): timed apart from processing, so a slow link cannot eat a request's deadline."""

    status_code = 408
    error_type = "upload_timeout"


class QueueTimeout(MedserveError):
    status_code = 504
    error_type = "timeout"
    shed_reason = "queue_timeout"


class NotConfigured(MedserveError):
    """A feature this cluster was not configured for (e.g. study jobs without a PACS)."""

    status_code = 501
    error_type = "not_configured"


class ModelLoadError(MedserveError):
    """A manifest or weights file is invalid: raised at load time, never at request time."""

    status_code = 500
    error_type = "model_load_error"
