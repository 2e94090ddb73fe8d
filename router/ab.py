"""A/B arm choice: a stable hash of the session key on sticky routes, so a caller stays
on one arm; otherwise (or without a key) a weighted random draw."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from modelyard.v1 import model_pb2

_SCALE = float(1 << 64)


def _unit(route: str, session_key: str) -> float:
    """A uniform value in [0, 1) fixed by (route, key): the same on every router."""
    digest = hashlib.blake2b(f"{route}\0{session_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def _by_weight(arms: Sequence[model_pb2.RouteArm], u: float) -> model_pb2.RouteArm:
    total = sum(max(0.0, a.weight) for a in arms)
    if total <= 0:
        return arms[0]
    point = u * total
    for arm in arms:
        point -= max(0.0, arm.weight)
        if point < 0:
            return arm
    return arms[-1]  # float rounding at the top edge


def choose_arm(
    route: model_pb2.Route, session_key: str, rng: random.Random | None = None
) -> model_pb2.RouteArm:
    """The arm for this request; ValueError for a route without arms."""
    if not route.arms:
        raise ValueError(f"route {route.name} has no arms")
    if route.sticky_sessions and session_key:
        return _by_weight(route.arms, _unit(route.name, session_key))
    return _by_weight(route.arms, (rng or random).random())
