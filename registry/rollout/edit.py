"""The shape of an edit the store applies to a route in one write (a rollout decision or
an operator's control), shared by the store and the rollout code."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.v1 import model_pb2


@dataclass(frozen=True)
class RouteEdited:
    """What an edit changed: the route (arms and rollout status; never its references)
    and, for a promotion, the model version to set to production."""

    route: model_pb2.Route
    promote: tuple[str, str] | None = None  # (name, version)


# Given the write's session, the stored route and the time: the edit, or None for no change.
RouteEdit = Callable[[AsyncSession, model_pb2.Route, datetime], Awaitable[RouteEdited | None]]
