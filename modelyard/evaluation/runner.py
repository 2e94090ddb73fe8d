"""Run every case against every target through the router, a bounded number at a time.

A target is a model ("name" or "name@version"), a route ("name": the router picks an
arm per request and each answer is grouped by the arm it reports), or "route:ARM",
which pins one arm. The router has no way to ask for one arm of a route, so a pinned
arm is called as the model it names (the route's fallbacks are not tried) and its
answers are labelled with the route and arm.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from modelyard.errors import InvalidArgument, ModelyardError, NotFound
from modelyard.evaluation.dataset import Case
from modelyard.evaluation.mesh import Generation, Sampling, request_for
from modelyard.v1 import model_pb2, router_pb2

MAX_TARGETS = 16


@dataclass(frozen=True)
class Target:
    """What the user named, and what the request's model field carries."""

    spec: str
    model: str
    route: str = ""
    arm: str = ""


@dataclass(frozen=True)
class Answer:
    """One case's outcome on one target: the text, or the error that stopped it."""

    target: int  # index into the run's targets
    case: int  # index into the dataset's cases
    text: str = ""
    model: str = ""
    version: str = ""
    arm: str = ""
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    error: str = ""


class Generator(Protocol):
    async def generate(
        self, request: router_pb2.GenerateRequest, timeout_s: float
    ) -> Generation: ...

    async def routes(self, timeout_s: float) -> list[model_pb2.Route]: ...


def parse_target(spec: str) -> Target:
    """ "name", "name@version", a route name, or "route:ARM"."""
    spec = spec.strip()
    route, sep, arm = spec.partition(":")
    if not sep:
        if not spec:
            raise InvalidArgument.for_field("--target", "a target cannot be empty")
        return Target(spec=spec, model=spec)
    if not route or not arm:
        raise InvalidArgument.for_field("--target", f"{spec!r}: use ROUTE:ARM to pin an arm")
    return Target(spec=spec, model="", route=route, arm=arm)


async def resolve_targets(specs: Sequence[str], mesh: Generator) -> list[Target]:
    """Parse the targets and pin each ROUTE:ARM to the model its arm names."""
    if not 1 <= len(specs) <= MAX_TARGETS:
        raise InvalidArgument.for_field("--target", f"give 1 to {MAX_TARGETS} targets")
    targets = [parse_target(s) for s in specs]
    if len({t.spec for t in targets}) != len(targets):
        raise InvalidArgument.for_field("--target", "a target is named twice")
    # Asked even without a pinned arm: an unreachable router or a refused key fails here,
    # once, instead of as an error on every case.
    routes = {r.name: r for r in await mesh.routes(timeout_s=30)}
    return [_pin(t, routes) if t.arm else t for t in targets]


def _pin(target: Target, routes: dict[str, model_pb2.Route]) -> Target:
    route = routes.get(target.route)
    if route is None:
        raise NotFound(f"the router knows no route {target.route!r} (target {target.spec})")
    for arm in route.arms:
        if arm.name == target.arm:
            return Target(spec=target.spec, model=arm.model, route=route.name, arm=arm.name)
    names = ", ".join(a.name for a in route.arms) or "none"
    raise NotFound(f"route {route.name!r} has no arm {target.arm!r} (its arms: {names})")


async def run(
    cases: Sequence[Case],
    targets: Sequence[Target],
    mesh: Generator,
    sampling: Sampling,
    *,
    concurrency: int = 4,
    progress: Callable[[], None] | None = None,
) -> list[Answer]:
    """Every (case, target) pair, at most `concurrency` at once. Cases go round the
    targets in turn, so every target meets the same load over the run."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(t: int, c: int) -> Answer:
        async with gate:
            answer = await _answer(mesh, targets[t], t, c, cases[c], sampling)
        if progress is not None:
            progress()
        return answer

    jobs = [one(t, c) for c in range(len(cases)) for t in range(len(targets))]
    return list(await asyncio.gather(*jobs))


async def _answer(
    mesh: Generator, target: Target, t: int, c: int, case: Case, sampling: Sampling
) -> Answer:
    request = request_for(target.model, case, sampling)
    begun = time.monotonic()
    try:
        generation = await mesh.generate(request, sampling.timeout_s)
    except ModelyardError as err:
        return Answer(target=t, case=c, error=f"{err.code.name}: {err.message}")
    except TimeoutError:
        return Answer(target=t, case=c, error="DEADLINE_EXCEEDED")
    started, finished = generation.started, generation.finished
    timings = finished.timings
    # The worker's and router's own figures; the wall clock when a stand-in gave none.
    latency = timings.total_ms + timings.route_ms or (time.monotonic() - begun) * 1000
    return Answer(
        target=t,
        case=c,
        text=generation.text,
        model=started.model,
        version=started.version,
        arm=started.arm or target.arm,
        cost_usd=finished.cost.total_usd,
        latency_ms=latency,
    )
