"""What a worker's failure before the first token means: the next candidate, or the
answer."""

from __future__ import annotations

import logging

import grpc

from modelyard.errors import RETRY_ELSEWHERE, from_rpc_error
from router.relay.attempts import Fatal, Retryable
from router.relay.stream import NoFinish, describe, for_client
from router.workers import WorkerHandle

log = logging.getLogger(__name__)


def refused(
    request_id: str, handle: WorkerHandle, err: grpc.aio.AioRpcError | NoFinish
) -> Retryable | Fatal:
    """Try the next one (UNAVAILABLE, CANCELLED, a full worker, no finish), or this is
    the answer."""
    code = err.code() if isinstance(err, grpc.aio.AioRpcError) else None
    if code is not None and code not in RETRY_ELSEWHERE:
        return Fatal(from_rpc_error(err))
    failure = f"{handle.address} ({for_client(err)})"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Retryable(failure, exhausted=from_rpc_error(err))
    log.warning(
        "worker %s failed before the first token of %s: %s",
        handle.name,
        request_id,
        describe(err),
    )
    return Retryable(failure)


def left_pool(handle: WorkerHandle) -> Retryable:
    """Discovery dropped the worker and closed its channel after it was scheduled: the
    channel's calls raise grpc's UsageError, which means "try the next candidate"."""
    return Retryable(f"{handle.name} (left the pool)")
