"""OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, with the
HTTP status that matches the gRPC status code of the failure."""

from __future__ import annotations

from typing import Any

import grpc
from starlette.responses import JSONResponse

from modelyard.errors import ModelyardError

# gRPC code -> (HTTP status, OpenAI error type, code).
_BY_CODE: dict[grpc.StatusCode, tuple[int, str, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", "invalid_value"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error", "failed_precondition"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error", "invalid_value"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error", "model_not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "invalid_request_error", "conflict"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error", "permission_denied"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error", "invalid_api_key"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "rate_limit_exceeded"),
    grpc.StatusCode.UNAVAILABLE: (503, "server_error", "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error", "timeout"),
    grpc.StatusCode.CANCELLED: (499, "invalid_request_error", "cancelled"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "server_error", "not_implemented"),
}
_INTERNAL = (500, "server_error", "internal_error")


class OpenAIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid(message: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code="invalid_value" if param else None)


def from_error(err: ModelyardError) -> OpenAIError:
    """The OpenAI error for a failed router operation, keeping its field and retry hints."""
    status, type_, code = _BY_CODE.get(err.code, _INTERNAL)
    param = None
    if err.violations:
        # "sampling.max_tokens" is "max_tokens" in OpenAI's request.
        param = err.violations[0].field.removeprefix("sampling.")
    headers = {}
    if err.retry_after_s is not None:
        headers["retry-after"] = f"{max(1, round(err.retry_after_s))}"
    return OpenAIError(
        status, err.message or code, type_=type_, param=param, code=code, headers=headers
    )


def unauthorized(message: str, *, missing: bool) -> OpenAIError:
    """401 in OpenAI's shape: no API key, or one that is not valid."""
    return OpenAIError(
        401,
        message,
        code=None if missing else "invalid_api_key",
        headers={"www-authenticate": "Bearer"},
    )


def forbidden(message: str) -> OpenAIError:
    """403: a valid key that may not call this endpoint."""
    return OpenAIError(403, message, code="permission_denied")


def too_large(limit: int) -> OpenAIError:
    """413: the request body is over the front's limit."""
    return OpenAIError(
        413, f"the request body is larger than {limit} bytes", code="request_too_large"
    )


def busy() -> OpenAIError:
    """429: the front has as many requests in flight as it takes; the client retries."""
    return OpenAIError(
        429,
        "too many requests in flight; retry shortly",
        type_="rate_limit_error",
        code="rate_limit_exceeded",
        headers={"retry-after": "1"},
    )
