"""Domain errors and their one mapping to gRPC status codes.

Plain-Python code raises these; the `grpc_errors` decorator on each servicer
method turns them into a gRPC status with google.rpc details a client can act
on (which field, which resource, when to retry). Clients turn an
``AioRpcError`` back into the same type with `from_rpc_error`.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, cast

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import trace

log = logging.getLogger(__name__)

ERROR_DOMAIN = "modelyard.dev"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


# A worker's failure before its first token that another worker may take instead (the
# router's relay and the SDK's direct streams both follow it): unreachable, full, or
# CANCELLED, which a gRPC server that begins to stop (a worker leaving the pool) gives
# the calls it had not yet handed to the worker. Anything else is the answer: a bad
# request stays bad on every worker. A caller's own cancel is never retried (asyncio
# raises CancelledError for it; the SDK's sync call checks gRPC's words).
RETRY_ELSEWHERE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
)


class ModelyardError(Exception):
    """Base of all errors that cross a service boundary."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or type(self).__name__.upper()
        self.metadata = dict(metadata or {})
        self.violations = tuple(violations)
        self.retry_after_s = retry_after_s

    def to_status(self) -> status_pb2.Status:
        details: list[any_pb2.Any] = []
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
        )
        details.append(_pack(info))
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in self.violations
                ]
            )
            details.append(_pack(bad))
        if self.retry_after_s is not None:
            delay = duration_pb2.Duration()
            delay.FromMilliseconds(int(self.retry_after_s * 1000))
            details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=details)


class InvalidArgument(ModelyardError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    @classmethod
    def for_field(cls, field: str, description: str) -> InvalidArgument:
        return cls(f"{field}: {description}", violations=[FieldViolation(field, description)])

    @classmethod
    def for_violations(cls, violations: Sequence[FieldViolation]) -> InvalidArgument:
        message = "; ".join(f"{v.field}: {v.description}" for v in violations)
        return cls(message, violations=violations)


class NotFound(ModelyardError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ModelyardError):
    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhausted(ModelyardError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(ModelyardError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ModelyardError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ModelyardError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ModelyardError):
    code = grpc.StatusCode.CANCELLED


class Unimplemented(ModelyardError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Unauthenticated(ModelyardError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ModelyardError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Internal(ModelyardError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[ModelyardError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        ResourceExhausted,
        FailedPrecondition,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        Unimplemented,
        Unauthenticated,
        PermissionDenied,
        Internal,
    )
}


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def from_rpc_error(err: grpc.aio.AioRpcError | grpc.RpcError) -> ModelyardError:
    """Rebuild the domain error (with its details) from a failed call."""
    code = cast(grpc.StatusCode, err.code())
    message = cast(str, err.details() or "")
    cls = _BY_CODE.get(code, ModelyardError)
    violations: list[FieldViolation] = []
    reason = ""
    metadata: dict[str, str] = {}
    retry_after: float | None = None
    try:
        status = rpc_status.from_call(err)
    except (AttributeError, ValueError):
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToMilliseconds() / 1000
    result = cls(
        message, reason=reason, metadata=metadata, violations=violations, retry_after_s=retry_after
    )
    if cls is ModelyardError:
        result.code = code  # type: ignore[misc]
    return result


F = TypeVar("F", bound=Callable[..., Any])


async def abort(context: grpc.aio.ServicerContext[Any, Any], err: ModelyardError) -> None:
    """End the call with the error's status and details.

    A retry hint also goes out as `grpc-retry-pushback-ms`, the form gRPC clients' own
    retry policies honour (RetryInfo is for code that reads the details).
    """
    status = rpc_status.to_status(err.to_status())
    if err.retry_after_s is not None:
        pushback = ("grpc-retry-pushback-ms", str(max(0, int(err.retry_after_s * 1000))))
        status = _WithMetadata(status.code, status.details, (*status.trailing_metadata, pushback))
    await context.abort_with_status(status)


@dataclass(frozen=True)
class _WithMetadata(grpc.Status):  # type: ignore[misc]
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def grpc_errors(method: F) -> F:
    """Map ModelyardError (and stray exceptions) raised by a servicer method to a status.

    Works for unary methods and for server-streaming async generators.
    """
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for item in method(self, request, context):
                    yield item
            except ModelyardError as err:
                await abort(context, err)
            except Exception as err:
                if _is_abort(err):
                    raise
                await abort(context, internal_error(method.__qualname__, err))

        return cast(F, stream_wrapper)

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: Any) -> Any:
        try:
            return await cast(Callable[..., Awaitable[Any]], method)(self, request, context)
        except ModelyardError as err:
            await abort(context, err)
        except Exception as err:
            if _is_abort(err):
                raise
            await abort(context, internal_error(method.__qualname__, err))

    return cast(F, unary_wrapper)


def internal_error(where: str, err: BaseException) -> Internal:
    """What a client learns of an unexpected `err`: that it happened and the trace id to
    look for. Never its text: exceptions carry SQL, paths, URLs and secrets. The log line
    (with the same trace id) has the whole traceback."""
    ctx = trace.get_current_span().get_span_context()
    trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else ""
    log.error("unhandled error in %s", where, exc_info=err)
    where_to_look = f" under trace id {trace_id}" if trace_id else ""
    return Internal(
        f"internal error; the service log has the details{where_to_look}",
        reason="INTERNAL",
        metadata={"trace_id": trace_id} if trace_id else {},
    )


def _is_abort(err: BaseException) -> bool:
    # context.abort() raises grpc's own AbortError; it must pass through untouched. Any
    # other grpc exception (a UsageError from a call on a channel closed under us, an
    # RpcError from a downstream call nobody translated) is unexpected: INTERNAL, as
    # passing it on would send its text to the client under UNKNOWN.
    return isinstance(err, grpc.aio.AbortError)


def unimplemented(what: str, issue: str) -> Unimplemented:
    """The error for an RPC that a later milestone implements."""
    return Unimplemented(
        f"{what} is not implemented yet in this modelyard release ({issue})",
        reason="NOT_IMPLEMENTED_YET",
    )
