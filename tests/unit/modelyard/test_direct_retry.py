"""Which worker failures before the first token make a direct-stream client pick again."""

from __future__ import annotations

import grpc
import pytest

from modelyard.direct import MAX_PICKS, Picks
from modelyard.v1 import router_pb2


class Failed(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    "code, details, again",
    [
        (grpc.StatusCode.UNAVAILABLE, "failed to connect", True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "the model's queue is full", True),
        # A worker's gRPC server that begins to stop cancels the calls it had not yet
        # handed to the worker: never served, so another worker may take it.
        (grpc.StatusCode.CANCELLED, "CANCELLED", True),
        # The caller cancelled (DirectCall.cancel): over, never tried again.
        (grpc.StatusCode.CANCELLED, "Locally cancelled by application!", False),
        (grpc.StatusCode.INVALID_ARGUMENT, "max_tokens is over the model's limit", False),
    ],
)
def test_a_failure_before_the_first_token_picks_again_only_when_safe(
    code: grpc.StatusCode, details: str, again: bool
) -> None:
    picks = Picks(router_pb2.GenerateRequest(model="m"), timeout_s=10)
    picks.next_request()
    pick = router_pb2.PickWorkerResponse(worker_address="127.0.0.1:1")

    assert picks.retry(Failed(code, details), pick) is again
    assert picks.exclude == (["127.0.0.1:1"] if again else [])


def test_picks_stop_after_the_most_a_generation_may_take() -> None:
    picks = Picks(router_pb2.GenerateRequest(model="m"), timeout_s=10)
    pick = router_pb2.PickWorkerResponse(worker_address="127.0.0.1:1")
    unavailable = Failed(grpc.StatusCode.UNAVAILABLE, "down")
    tried = []
    for _ in range(MAX_PICKS + 2):
        picks.next_request()
        tried.append(picks.retry(unavailable, pick))

    assert tried == [True] * (MAX_PICKS - 1) + [False] * 3
