"""The error tree. Each error knows its HTTP status and OpenAI error type; one handler maps it to JSON.

Messages go to clients as they are: they name the field and the fix, never a path, a traceback or an
internal address.
"""

from __future__ import annotations


class VQAError(Exception):
    """Base of every error a client may see."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def to_openai(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


class InvalidRequest(VQAError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(VQAError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(VQAError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(VQAError):
    status = 404
    type = "not_found_error"
    code = "model_not_found"


class InvalidImage(InvalidRequest):
    code = "invalid_image"


class ImageTooLarge(InvalidImage):
    code = "image_too_large"


class UnsupportedFormat(InvalidImage):
    status = 415
    code = "unsupported_image_format"


class UnsupportedMediaType(InvalidRequest):
    """A request body in the wrong Content-Type (e.g. form data sent to a JSON endpoint)."""

    status = 415
    code = "unsupported_media_type"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "payload_too_large"


class FetchRefused(InvalidRequest):
    """A URL the fetcher will not touch (scheme, address, host rules)."""

    code = "image_url_refused"


class FetchFailed(VQAError):
    """The image host answered badly (4xx: client's problem) or not at all (502/504)."""

    status = 502
    type = "upstream_error"
    code = "image_fetch_failed"

    def __init__(self, message: str, *, status: int = 502, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.status = status
        if status < 500:
            self.type = "invalid_request_error"


class BlockedInput(InvalidRequest):
    code = "blocked_input"


class BlockedOutput(VQAError):
    status = 200
    type = "content_filter"
    code = "content_filter"


class Overloaded(VQAError):
    status = 429
    type = "rate_limit_error"
    code = "overloaded"


class RateLimited(Overloaded):
    code = "rate_limited"


class DeadlineExceeded(VQAError):
    status = 504
    type = "timeout_error"
    code = "deadline_exceeded"

    def __init__(self, message: str = "the answer took longer than the request deadline; retry, or raise "
                                      "VQA_REQUEST_TIMEOUT_S", **kwargs: object) -> None:
        # The one wording of a passed request deadline, wherever it is noticed (queue, gate, engine).
        super().__init__(message, **kwargs)  # type: ignore[arg-type]


class EngineFailure(VQAError):
    status = 503
    type = "server_error"
    code = "engine_failure"


class ShuttingDown(VQAError):
    status = 503
    type = "server_error"
    code = "shutting_down"


class ConfigError(VQAError):
    """A bad setting or CLI option: raised at start-up, printed as one line."""

    status = 500
    code = "config_error"


class CaptureUnavailable(VQAError):
    """The capture database cannot be reached or refused a statement (capture/): the CLI prints it;
    on the request path the capture writer counts the rows it drops instead of raising."""

    status = 503
    type = "server_error"
    code = "capture_unavailable"


class CaptureOff(VQAError):
    """A capture route (feedback, review) on a server that captures nothing (no VQA_CAPTURE_URL)."""

    status = 409
    type = "invalid_request_error"
    code = "capture_off"
