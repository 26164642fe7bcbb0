"""Typed errors shared by every layer.

Each error knows its HTTP status and OpenAI error type, so the API maps it to
the envelope in one place (`api/errors.py`) and nobody classifies errors by
matching message strings. Errors cross process boundaries as
`(class name, message, param, code)` and are rebuilt with `from_wire`.
"""

from __future__ import annotations


class OmniError(Exception):
    status_code = 500
    error_type = "internal_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_wire(self) -> tuple[str, str, str | None, str | None]:
        return (type(self).__name__, self.message, self.param, self.code)

    @staticmethod
    def from_wire(wire: tuple[str, str, str | None, str | None]) -> OmniError:
        name, message, param, code = wire
        cls = _BY_NAME.get(name, OmniError)
        return cls(message, param=param, code=code)


class InvalidRequest(OmniError):
    """The request is malformed or a parameter is out of range (400)."""

    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class Unauthorized(OmniError):
    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(OmniError):
    """A browser page of another site tried to drive the server (403)."""

    status_code = 403
    error_type = "invalid_request_error"
    code = "cross_origin_forbidden"


class UnsupportedMediaType(OmniError):
    """The body is not in a media type the route reads (415)."""

    status_code = 415
    error_type = "invalid_request_error"
    code = "unsupported_media_type"


class NotFound(OmniError):
    status_code = 404
    error_type = "invalid_request_error"


class ModelNotFound(NotFound):
    code = "model_not_found"


class PayloadTooLarge(OmniError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class ClientClosedRequest(OmniError):
    """The client went away before the answer was ready: its request was aborted (nginx's 499). Nobody reads
    the response; the status is for logs and metrics, where a 400 would blame the request."""

    status_code = 499
    error_type = "client_closed_request"
    code = "client_closed_request"


class Overloaded(OmniError):
    """The queue is full: retry later (503)."""

    status_code = 503
    error_type = "server_overloaded"
    code = "queue_full"


class Unavailable(OmniError):
    """A stage is down or restarting (503)."""

    status_code = 503
    error_type = "service_unavailable"
    code = "unhealthy"


class WorkerCrashed(OmniError):
    """The stage worker running this request died mid-request (500)."""

    status_code = 500
    error_type = "internal_error"
    code = "worker_crashed"


class OutOfMemory(OmniError):
    status_code = 507
    error_type = "insufficient_storage"
    code = "out_of_memory"


class StorageFailed(OmniError):
    """The data directory cannot be written (the disk is full, or it is read-only): 507, and what is
    already stored stays as it was."""

    status_code = 507
    error_type = "insufficient_storage"
    code = "insufficient_storage"


class ConfigError(Exception):
    """A bad flag, model path or pipeline config; the CLI prints it on one line."""


_BY_NAME = {
    cls.__name__: cls
    for cls in (
        OmniError,
        InvalidRequest,
        ContextLengthExceeded,
        Unauthorized,
        Forbidden,
        UnsupportedMediaType,
        NotFound,
        ModelNotFound,
        PayloadTooLarge,
        ClientClosedRequest,
        Overloaded,
        Unavailable,
        WorkerCrashed,
        OutOfMemory,
        StorageFailed,
    )
}
