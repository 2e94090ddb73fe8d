"""Direct streams: PickWorker runs a generation's admission and scheduling and hands out
a ticket for the chosen worker; ReportOutcome takes the worker's word on how it ended.

The router is then off the token path: its cost per token is zero, and the client's
time to first token grows by one unary round trip. The pick goes through the relay's own
steps (`Relay.intake`, `prepare`, `plan`, `exhausted`), so a direct request is checked,
resolved, scheduled and refused exactly as a proxied one. Until its outcome arrives it
holds an admission slot and counts in flight on its worker (router/direct/pending.py).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Sequence

from google.protobuf import timestamp_pb2
from opentelemetry import trace

from modelyard.errors import FailedPrecondition, InvalidArgument, ModelyardError
from modelyard.refs import key_of
from modelyard.tickets import Claims, Grant, TicketSigner, unverified_nonce
from modelyard.v1 import common_pb2, router_pb2
from router.accounting import Accounting
from router.direct.outcome import account
from router.direct.pending import PendingPicks, Pick
from router.relay import Relay
from router.relay.attempts import Attempt, Retryable
from router.relay.calls import route_span
from router.relay.requests import worker_request
from router.relay.run import GenerationRun

DEFAULT_HOLD_S = 300.0  # a pick whose caller set no deadline
MAX_HOLD_S = 900.0  # the longest a pick holds its slot without a report
REPORT_GRACE_S = 15.0  # after the deadline: the worker's report is on its way
MAX_REPORTS_PER_CALL = 256  # ReportOutcomes: a batch stays well under 1 MB

NO_KEY = (
    "direct streams need a ticket key on the router: set MODELYARD_ROUTER_TICKET_KEY="
    "key_id:/path/private.pem (Ed25519) and give workers its public key in "
    "MODELYARD_WORKER_TICKET_KEYS; or call Generate (proxied)"
)


class TicketDesk:
    def __init__(
        self,
        relay: Relay,
        accounting: Accounting,
        signer: TicketSigner | None,
        router_id: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._relay = relay
        self._acct = accounting
        self._signer = signer
        self.router_id = router_id
        self._clock = clock
        self._wall = wall_clock
        self.pending = PendingPicks(relay.admission, relay.load.in_flight, clock)

    def _need_signer(self) -> TicketSigner:
        if self._signer is None:
            raise FailedPrecondition(NO_KEY, reason="NO_TICKET_KEY")
        return self._signer

    async def pick(
        self, request: router_pb2.PickWorkerRequest, *, timeout_s: float | None
    ) -> router_pb2.PickWorkerResponse:
        """The worker for `request.request` and its ticket; a slot is held from here."""
        signer = self._need_signer()
        gen = request.request
        accepted = self._relay.intake(gen)
        request_id, key = accepted.request_id, accepted.key
        started_at = self._clock()
        deadline = None if timeout_s is None else started_at + timeout_s
        self.pending.forget_request(key, request_id)  # asked again: the last pick failed
        self.pending.hold(key)
        try:
            with (
                route_span(gen, request_id) as span,
                trace.use_span(span, record_exception=False, set_status_on_exception=False),
            ):
                run = await self._relay.prepare(gen, request_id, started_at, deadline, span)
                attempt = self._choose(run, frozenset(request.exclude_workers))
                span.set_attribute("modelyard.worker", attempt.cand.worker)
                span.set_attribute("modelyard.direct", True)
        except BaseException:
            self.pending.unhold(key)
            raise
        return self._issue(signer, run, attempt, key)

    def _choose(self, run: GenerationRun, exclude: frozenset[str]) -> Attempt:
        """The best candidate the client did not exclude; else the relay's final error."""
        for attempt in self._relay.plan(run):
            if attempt.cand.worker not in exclude:
                return attempt
            run.log.retryable(Retryable(f"{attempt.cand.worker} (the client could not use it)"))
        raise self._relay.exhausted(run)

    def _issue(
        self, signer: TicketSigner, run: GenerationRun, attempt: Attempt, key: str
    ) -> router_pb2.PickWorkerResponse:
        a = run.assignment(attempt)
        call = worker_request(run.request, a)
        grant = Grant(
            route=a.route,
            arm=a.arm,
            attempt=a.attempt,
            client=run.client,
            max_tokens=call.sampling.max_tokens or call.max_output_tokens_ceiling,
            router=self.router_id,
        )
        claims = signer.mint(run.request_id, key_of(a.model), grant)
        now = self._clock()
        left = DEFAULT_HOLD_S if run.deadline is None else run.deadline - now
        hold_s = min(max(left, signer.ttl_s), MAX_HOLD_S) + REPORT_GRACE_S
        self.pending.add(self._pick(claims, run, attempt, key, now + hold_s))
        self._acct.breakers.on_attempt(attempt.cand.worker)
        handle = attempt.handle
        started = common_pb2.GenerationStarted(
            request_id=a.request_id,
            model=a.model.name,
            version=a.model.version,
            worker_id=handle.worker_id or handle.address,
            route=a.route,
            arm=a.arm,
            attempt=a.attempt,
        )
        reply = router_pb2.PickWorkerResponse(
            worker_address=handle.address,
            worker_id=handle.worker_id or handle.address,
            ticket=claims.raw,
            worker_request=call,
            started=started,
        )
        if run.deadline is not None:
            reply.deadline.CopyFrom(_timestamp(self._wall() + left))
        return reply

    def _pick(
        self, claims: Claims, run: GenerationRun, attempt: Attempt, key: str, hold_until: float
    ) -> Pick:
        return Pick(
            nonce=claims.nonce,
            ticket=claims.raw,
            request_id=run.request_id,
            worker=attempt.cand.worker,
            model=attempt.cand.model,
            route=run.target.route,
            arm=run.target.arm,
            attempt=attempt.number,
            client=run.client,
            key=key,
            chat=bool(run.request.messages),
            prefix=run.req.prefix,
            prefix_precise=attempt.cand.prefix_precise,
            route_ms=(self._clock() - run.started_at) * 1000,
            hold_until=hold_until,
        )

    def report(self, request: router_pb2.ReportOutcomeRequest) -> None:
        """Account a ticketed request's outcome, once per ticket, and free its pick."""
        self.pending.sweep()
        pick = self.pending.take(self._nonce_of(request.ticket))
        if pick is None:
            raise FailedPrecondition(
                "no pick is outstanding for this ticket: its outcome was reported already, "
                "its hold ran out, or another router replica issued it",
                reason="TICKET_NOT_OUTSTANDING",
            )
        account(self._acct, self._relay.load.history, pick, request)

    def report_all(
        self, reports: Sequence[router_pb2.ReportOutcomeRequest]
    ) -> router_pb2.ReportOutcomesResponse:
        """`report` for each of a batch, each accepted or refused on its own."""
        if not 0 < len(reports) <= MAX_REPORTS_PER_CALL:
            raise InvalidArgument.for_field(
                "reports", f"send 1 to {MAX_REPORTS_PER_CALL} reports per call, not {len(reports)}"
            )
        self._need_signer()
        reply = router_pb2.ReportOutcomesResponse()
        for request in reports:
            result = reply.results.add()
            try:
                self.report(request)
            except ModelyardError as err:
                result.status_code, result.reason = err.code.value[0], err.reason
        return reply

    def _nonce_of(self, ticket: str) -> str:
        """The nonce of a ticket this router issued; PERMISSION_DENIED if it did not.

        A ticket equal to the one held for its pick is ours by construction: the Ed25519
        check (about half of a report's handling in the direct-stream profile) is only
        for the rest."""
        signer = self._need_signer()
        nonce = unverified_nonce(ticket)
        pick = None if nonce is None else self.pending.get(nonce)
        if pick is not None and hmac.compare_digest(pick.ticket.encode(), ticket.encode()):
            return pick.nonce
        return signer.read(ticket).nonce


def _timestamp(unix_s: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(unix_s * 1e9))
    return stamp
