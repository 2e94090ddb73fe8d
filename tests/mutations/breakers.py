"""The breakers: what each one breaks, how, and which tests must catch it.

Targets are dotted paths resolved when the breaker is applied; a target that no longer
exists (a rename) makes the check fail loudly rather than pass silently.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class Breaker:
    name: str
    breaks: str  # the behaviour, in words
    apply: Callable[[pytest.MonkeyPatch], None]
    catchers: tuple[str, ...]  # pytest node ids; at least one must fail


def _forced_polling(mp: pytest.MonkeyPatch) -> None:
    # The blocking index always reset: every read returns at once, the watch polls.
    mp.setattr("modelyard.discovery.watch.next_index", lambda previous, returned: 0)


def _revision_outside_the_transaction(mp: pytest.MonkeyPatch) -> None:
    from sqlalchemy import update

    from registry.tables import CATALOG_ID, CatalogRow

    async def bump_in_its_own_transaction(session: Any) -> int:
        # Commits the new revision at once, apart from the write that follows it: a
        # write that rolls back (or changes nothing) still moves the revision.
        async with session.bind.begin() as conn:
            result = await conn.execute(
                update(CatalogRow)
                .where(CatalogRow.id == CATALOG_ID)
                .values(revision=CatalogRow.revision + 1)
                .returning(CatalogRow.revision)
            )
            revision: int = result.scalar_one()
        return revision

    mp.setattr("registry.changes.bump_revision", bump_in_its_own_transaction)


def _gate_accepts_any_key(mp: pytest.MonkeyPatch) -> None:
    def accept(self: Any, token: str | None) -> str | None:
        # Any bearer secret passes as the role's first key (a missing one is still refused).
        return next(iter(self.keys.values()), "") if token is not None else None

    mp.setattr("modelyard.auth.Role.key_name", accept)


def _worker_ignores_cancellation(mp: pytest.MonkeyPatch) -> None:
    from worker.engines.llama_cpp import LlamaCppEngine

    original = LlamaCppEngine.generate
    pumps: set[asyncio.Task[None]] = set()

    def generate(self: LlamaCppEngine, req: Any) -> AsyncIterator[Any]:
        # The engine's stream is consumed to its end by a task nobody cancels: closing the
        # consumer's side, aborting or a deadline no longer stops the decoding.
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for event in original(self, req):
                    await queue.put(event)
            finally:
                await queue.put(None)

        task = asyncio.get_running_loop().create_task(pump())
        pumps.add(task)
        task.add_done_callback(pumps.discard)

        async def events() -> AsyncIterator[Any]:
            while (event := await queue.get()) is not None:
                yield event

        return events()

    mp.setattr(LlamaCppEngine, "generate", generate)
    mp.setattr(LlamaCppEngine, "abort", lambda self, request_id: None)


def _router_skips_the_breaker(mp: pytest.MonkeyPatch) -> None:
    from router.scheduling.filters.breaker import BreakerFilter

    mp.setattr(BreakerFilter, "filter", lambda self, req, cands, cycle: list(cands))


def _relay_resends_after_the_first_token(mp: pytest.MonkeyPatch) -> None:
    from router.relay.generation import Relay
    from router.relay.stream import StreamBroken

    original = Relay.generate

    async def generate(self: Relay, request: Any, *, timeout_s: float | None) -> AsyncIterator[Any]:
        # A worker failing mid-stream is retried from the start: the client gets the
        # text it already has a second time.
        try:
            async for event in original(self, request, timeout_s=timeout_s):
                yield event
        except StreamBroken:
            async for event in original(self, request, timeout_s=timeout_s):
                yield event

    mp.setattr(Relay, "generate", generate)


BREAKERS: tuple[Breaker, ...] = (
    Breaker(
        "consul-polling",
        "the Consul watch polls instead of using blocking queries",
        _forced_polling,
        (
            "tests/unit/discovery/test_consul_watch.py"
            "::test_watch_uses_blocking_queries_with_the_last_index",
        ),
    ),
    Breaker(
        "registry-revision-outside-transaction",
        "the registry bumps the catalogue revision outside the write's transaction",
        _revision_outside_the_transaction,
        (
            "tests/unit/registry/test_registry_store.py::test_identical_registration_is_idempotent",
            "tests/unit/registry/test_registry_store.py"
            "::test_every_write_bumps_the_revision_by_one_and_records_a_change",
        ),
    ),
    Breaker(
        "worker-ignores-cancellation",
        "the worker decodes on after the client cancels or its deadline passes",
        _worker_ignores_cancellation,
        (
            "tests/unit/worker/test_worker_service.py::test_cancelling_the_call_stops_decoding",
            "tests/unit/worker/test_worker_service.py"
            "::test_the_deadline_is_enforced_while_decoding",
        ),
    ),
    Breaker(
        "router-skips-breaker",
        "the router sends requests to workers whose circuit breaker is open",
        _router_skips_the_breaker,
        (
            "tests/unit/router/scheduling/filters/test_breaker.py"
            "::test_drops_workers_whose_breaker_refuses",
            "tests/unit/router/test_routing_service.py"
            "::test_breaker_opens_on_a_failing_worker_and_traffic_goes_elsewhere",
        ),
    ),
    Breaker(
        "relay-resends-after-first-token",
        "a worker failing after the first token is retried, resending text to the client",
        _relay_resends_after_the_first_token,
        (
            "tests/unit/router/test_relay.py"
            "::test_failure_after_the_first_token_ends_unavailable_without_retrying",
            "tests/unit/router/test_relay.py"
            "::test_no_retry_after_first_token_even_with_another_worker",
        ),
    ),
    Breaker(
        "api-key-gate-open",
        "the bearer gate accepts any key (or none)",
        _gate_accepts_any_key,
        (
            "tests/unit/modelyard/test_auth.py::test_missing_wrong_and_right_keys",
            "tests/unit/router/test_router_auth.py::test_router_api_keys",
            "tests/unit/router/test_openai_front.py"
            "::test_requests_without_a_valid_key_are_401_and_reach_no_router",
        ),
    ),
)


def by_name(name: str) -> Breaker:
    for breaker in BREAKERS:
        if breaker.name == name:
            return breaker
    known = ", ".join(b.name for b in BREAKERS)
    raise KeyError(f"no breaker {name!r}; known: {known}")
