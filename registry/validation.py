"""Route rules, as a pure function of the route and the catalogue facts it depends on.

A route's arms name models ("name@version", or "name" for that model's newest
production version). Its fallbacks name models the same way, or other routes by
name: when every worker of the chosen arm fails, the router tries each fallback
in order, and a fallback route means "serve this request through that route".
So fallback routes form a graph, and a cycle in it (a -> b -> a, or a -> a)
would send a failing request round forever: refused.

The rules, each reported on the field that breaks it:
- route.name follows the model name rules, is not "auto" (the router's "choose for me")
  and is not a model's name (ALREADY_EXISTS);
- at least one arm; arm names unique (an empty name defaults to the arm's model);
- route.arms[i].weight is finite and > 0;
- route.arms[i].model names a model version that exists and is not archived
  (a bare name needs at least one version that is not archived);
- route.fallbacks[i] is such a model, or an existing route; no duplicates; no cycle;
- route.default_objective is a known Objective; ceilings are finite, ttft > 0, cost >= 0;
- route.rollout follows `registry.rollout.validate`; on such a route the two arms' weights
  are the registry's (a weight of 0 is accepted: the store sets them from the status).

The store keeps these true afterwards too: deleting or archiving what a route
uses, or deleting a route another route falls back to, is FAILED_PRECONDITION.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from modelyard.errors import AlreadyExists, FieldViolation, InvalidArgument
from modelyard.refs import AUTO, ModelRef, check_name, check_version
from modelyard.v1 import common_pb2, model_pb2
from registry.rollout.validate import check_rollout

MAX_ARMS = 64
MAX_FALLBACKS = 16
MAX_ARM_NAME = 128
MAX_RESPONSE_CACHE_TTL_S = 86400  # ResponseCachePolicy.ttl_seconds, as model.proto says
OBJECTIVES = frozenset(common_pb2.Objective.values())
ARCHIVED = model_pb2.STAGE_ARCHIVED


@dataclass(frozen=True)
class Target:
    """What one reference of a route points at, once resolved."""

    field: str  # "arms[0].model", "fallbacks[1]"
    kind: str  # "model" or "route"
    name: str
    version: str  # "" for a bare name


@dataclass(frozen=True)
class RouteFacts:
    """The part of the catalogue a route's validity depends on.

    `versions` needs only the names the route mentions (see `mentioned_names`);
    `fallback_routes` is the whole fallback graph between routes, edges of the
    route under validation included or not (they are replaced).
    """

    # model name -> version -> stage
    versions: Mapping[str, Mapping[str, model_pb2.Stage.ValueType]] = field(default_factory=dict)
    # route name -> names of the routes among its fallbacks
    fallback_routes: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def is_route(self, name: str) -> bool:
        return name in self.fallback_routes


@dataclass(frozen=True)
class ValidRoute:
    route: model_pb2.Route  # normalized: arm names filled in, updated_at cleared
    targets: tuple[Target, ...]


def mentioned_names(route: model_pb2.Route) -> set[str]:
    """Every name the route refers to (models or routes), for the store to look up."""
    refs = [arm.model for arm in route.arms] + list(route.fallbacks)
    return {ref.strip().partition("@")[0] for ref in refs}


def validate_route(route: model_pb2.Route, facts: RouteFacts) -> ValidRoute:
    """The normalized route and what it references, or INVALID_ARGUMENT listing every bad field.

    A name that belongs to a model is ALREADY_EXISTS on route.name.
    """
    violations: list[FieldViolation] = []
    name_ok = _check(violations, check_name, route.name, "route.name")
    if name_ok and route.name == AUTO:
        violations.append(
            FieldViolation("route.name", f"{AUTO!r} is reserved: it asks the router to choose")
        )
        name_ok = False
    if name_ok and route.name in facts.versions:
        raise AlreadyExists(
            f"route.name: {route.name!r} is already a model's name; a request names a model "
            "or a route, so the two cannot share a name",
            reason="NAME_TAKEN_BY_MODEL",
            metadata={"field": "route.name", "name": route.name},
            violations=[FieldViolation("route.name", "already the name of a model")],
        )
    clean = model_pb2.Route()
    clean.CopyFrom(route)
    clean.ClearField("updated_at")
    targets: list[Target] = []
    _check_arms(clean, facts, violations, targets)
    _check_fallbacks(clean, facts, violations, targets, check_cycles=name_ok)
    _check_settings(clean, violations)
    _check_response_cache(clean, violations)
    check_rollout(clean, violations)
    if violations:
        raise InvalidArgument.for_violations(violations)
    return ValidRoute(clean, tuple(targets))


def _check_arms(
    route: model_pb2.Route,
    facts: RouteFacts,
    violations: list[FieldViolation],
    targets: list[Target],
) -> None:
    if not route.arms:
        violations.append(FieldViolation("route.arms", "at least one arm is required"))
    if len(route.arms) > MAX_ARMS:
        violations.append(FieldViolation("route.arms", f"at most {MAX_ARMS} arms"))
    seen_names: dict[str, int] = {}
    for i, arm in enumerate(route.arms):
        where = f"route.arms[{i}]"
        ref = _parse(violations, arm.model.strip(), f"{where}.model")
        if ref is not None:
            arm.model = str(ref)
            problem = _model_problem(ref, facts)
            if problem is None:
                targets.append(Target(f"arms[{i}].model", "model", ref.name, ref.version))
            else:
                violations.append(FieldViolation(f"{where}.model", problem))
        # A rollout's weights are the registry's: 0 (a canary not started) is fine there.
        floor_ok = arm.weight >= 0 if route.HasField("rollout") else arm.weight > 0
        if not math.isfinite(arm.weight) or not floor_ok:
            violations.append(
                FieldViolation(f"{where}.weight", f"must be a number > 0, got {arm.weight}")
            )
        arm.name = arm.name.strip() or arm.model
        if len(arm.name) > MAX_ARM_NAME:
            violations.append(FieldViolation(f"{where}.name", f"at most {MAX_ARM_NAME} characters"))
        elif arm.name in seen_names:
            violations.append(
                FieldViolation(
                    f"{where}.name",
                    f"{arm.name!r} is also the name of arms[{seen_names[arm.name]}]; "
                    "give each arm its own name",
                )
            )
        seen_names.setdefault(arm.name, i)


def _check_fallbacks(
    route: model_pb2.Route,
    facts: RouteFacts,
    violations: list[FieldViolation],
    targets: list[Target],
    *,
    check_cycles: bool,
) -> None:
    if len(route.fallbacks) > MAX_FALLBACKS:
        violations.append(FieldViolation("route.fallbacks", f"at most {MAX_FALLBACKS} fallbacks"))
    graph = dict(facts.fallback_routes)
    own: list[str] = []
    graph[route.name] = own
    seen: dict[str, int] = {}
    cleaned: list[str] = []
    for i, text in enumerate(route.fallbacks):
        where = f"route.fallbacks[{i}]"
        ref = _parse(violations, text.strip(), where)
        if ref is None:
            cleaned.append(text)
            continue
        cleaned.append(str(ref))
        if str(ref) in seen:
            violations.append(
                FieldViolation(where, f"{ref} is already fallbacks[{seen[str(ref)]}]")
            )
            continue
        seen[str(ref)] = i
        if not ref.version and (ref.name == route.name or facts.is_route(ref.name)):
            cycle = _path(graph, ref.name, route.name) if check_cycles else None
            if cycle is not None:
                loop = " -> ".join([route.name, *cycle])
                violations.append(
                    FieldViolation(
                        where, f"fallback cycle {loop}: a route cannot fall back to itself"
                    )
                )
                continue
            own.append(ref.name)
            targets.append(Target(f"fallbacks[{i}]", "route", ref.name, ""))
            continue
        problem = _model_problem(ref, facts)
        if problem is None:
            targets.append(Target(f"fallbacks[{i}]", "model", ref.name, ref.version))
        else:
            violations.append(FieldViolation(where, problem))
    route.fallbacks[:] = cleaned


def _check_settings(route: model_pb2.Route, violations: list[FieldViolation]) -> None:
    if route.default_objective not in OBJECTIVES:
        violations.append(
            FieldViolation(
                "route.default_objective", f"unknown objective {route.default_objective}"
            )
        )
    if route.HasField("max_ttft_ms") and not (
        math.isfinite(route.max_ttft_ms) and route.max_ttft_ms > 0
    ):
        violations.append(
            FieldViolation("route.max_ttft_ms", f"must be a number > 0, got {route.max_ttft_ms}")
        )
    if route.HasField("max_cost_per_1k_tokens") and not (
        math.isfinite(route.max_cost_per_1k_tokens) and route.max_cost_per_1k_tokens >= 0
    ):
        violations.append(
            FieldViolation(
                "route.max_cost_per_1k_tokens",
                f"must be a number >= 0, got {route.max_cost_per_1k_tokens}",
            )
        )


def _check_response_cache(route: model_pb2.Route, violations: list[FieldViolation]) -> None:
    ttl = route.response_cache.ttl_seconds
    if ttl > MAX_RESPONSE_CACHE_TTL_S:
        violations.append(
            FieldViolation(
                "route.response_cache.ttl_seconds",
                f"at most {MAX_RESPONSE_CACHE_TTL_S} (one day), got {ttl}; 0 means 300",
            )
        )


def _model_problem(ref: ModelRef, facts: RouteFacts) -> str | None:
    """Why `ref` cannot be routed to, or None when it can."""
    versions = facts.versions.get(ref.name)
    if not versions:
        if facts.is_route(ref.name):
            return f"{ref.name!r} is a route; only fallbacks may name a route, without @version"
        return f"model {ref} not found"
    if ref.version:
        stage = versions.get(ref.version)
        if stage is None:
            return f"model {ref} not found"
        if stage == ARCHIVED:
            return f"model {ref} is archived; archived versions are not routable"
        return None
    if all(stage == ARCHIVED for stage in versions.values()):
        return (
            f"every version of model {ref.name!r} is archived; archived versions are not routable"
        )
    return None


def _path(graph: Mapping[str, Sequence[str]], start: str, goal: str) -> list[str] | None:
    """Route names from start to goal along fallback edges (both included), or None."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    visited: set[str] = set()
    while stack:
        node, path = stack.pop()
        if node == goal:
            return path
        if node in visited:
            continue
        visited.add(node)
        stack.extend((nxt, [*path, nxt]) for nxt in graph.get(node, ()))
    return None


def _parse(violations: list[FieldViolation], text: str, where: str) -> ModelRef | None:
    name, sep, version = text.partition("@")
    ok = _check(violations, check_name, name, where)
    if ok and sep:
        ok = _check(violations, check_version, version, where)
    return ModelRef(name, version) if ok else None


def _check(
    violations: list[FieldViolation], check: Callable[[str, str], str], value: str, where: str
) -> bool:
    try:
        check(value, where)
    except InvalidArgument as err:
        violations += err.violations
        return False
    return True
