"""One generation on its way through the relay: the request, where it may go, what the
router decided and what each attempt said."""

from __future__ import annotations

from dataclasses import dataclass, field

from modelyard.v1 import router_pb2
from router.catalog import Target
from router.relay.attempts import Attempt, AttemptLog
from router.relay.requests import Assignment
from router.scheduling.types import Request


@dataclass
class GenerationRun:
    """One request on its way through the relay."""

    request: router_pb2.GenerateRequest
    request_id: str
    target: Target
    req: Request
    started_at: float
    deadline: float | None
    log: AttemptLog = field(default_factory=AttemptLog)
    first_token_at: float = 0.0
    client: str = ""  # the API key's name, for usage and logs
    output_ceiling: int = 0  # route's and key's, the lower: for a request without max_tokens

    def assignment(self, attempt: Attempt) -> Assignment:
        t = self.target
        return Assignment(
            self.request_id, attempt.number, attempt.cand.model, t.route, t.arm, self.output_ceiling
        )
