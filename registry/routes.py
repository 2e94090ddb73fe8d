"""Routes in SQL: rows, their references, the facts validation needs, and who uses what.

Functions take an open session; `registry.store` owns transactions and revisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.errors import FailedPrecondition, NotFound
from modelyard.refs import check_name
from modelyard.v1 import model_pb2
from registry import models
from registry.convert import to_timestamp
from registry.tables import RouteRefRow, RouteRow
from registry.validation import RouteFacts, ValidRoute, mentioned_names

# How many users a FAILED_PRECONDITION message lists.
USERS_SHOWN = 10


def row_to_route(row: RouteRow) -> model_pb2.Route:
    route = model_pb2.Route.FromString(row.spec)
    route.updated_at.CopyFrom(to_timestamp(row.updated_at))
    return route


async def find(session: AsyncSession, name: str) -> RouteRow | None:
    return await session.get(RouteRow, name)


async def get(session: AsyncSession, name: str) -> model_pb2.Route:
    check_name(name, "name")
    row = await find(session, name)
    if row is None:
        names = list(await session.scalars(select(RouteRow.name).order_by(RouteRow.name)))
        known = ", ".join(names[:USERS_SHOWN]) if names else "none yet"
        raise NotFound(
            f"route {name!r} not found; routes: {known}",
            reason="ROUTE_NOT_FOUND",
            metadata={"route": name},
        )
    return row_to_route(row)


async def list_all(session: AsyncSession) -> list[model_pb2.Route]:
    return [
        row_to_route(r) for r in await session.scalars(select(RouteRow).order_by(RouteRow.name))
    ]


async def facts_for(session: AsyncSession, route: model_pb2.Route) -> RouteFacts:
    """What `validate_route` needs: the mentioned models and the whole fallback graph."""
    names = mentioned_names(route) | {route.name}
    graph: dict[str, list[str]] = {
        name: [] for name in await session.scalars(select(RouteRow.name))
    }
    edges = await session.execute(
        select(RouteRefRow.route_name, RouteRefRow.target_name).where(
            RouteRefRow.target_kind == "route"
        )
    )
    for source, target in edges:
        graph.setdefault(source, []).append(target)
    return RouteFacts(versions=await models.stages_by_name(session, names), fallback_routes=graph)


async def save(session: AsyncSession, valid: ValidRoute, now: datetime) -> model_pb2.Route:
    """Insert or replace the route and its reference rows."""
    spec = valid.route.SerializeToString(deterministic=True)
    row = await find(session, valid.route.name)
    if row is None:
        session.add(RouteRow(name=valid.route.name, updated_at=now, spec=spec))
    else:
        row.spec, row.updated_at = spec, now
        await session.execute(delete(RouteRefRow).where(RouteRefRow.route_name == row.name))
    await session.flush()  # the route row before its references (foreign key)
    session.add_all(
        RouteRefRow(
            route_name=valid.route.name,
            field=t.field,
            target_kind=t.kind,
            target_name=t.name,
            target_version=t.version,
        )
        for t in valid.targets
    )
    stored = model_pb2.Route()
    stored.CopyFrom(valid.route)
    stored.updated_at.CopyFrom(to_timestamp(now))
    return stored


async def save_spec(
    session: AsyncSession, route: model_pb2.Route, now: datetime
) -> model_pb2.Route:
    """Replace a stored route's message whose references did not change (a rollout's
    weights and status): its reference rows stay as they are."""
    stored = model_pb2.Route()
    stored.CopyFrom(route)
    stored.ClearField("updated_at")
    row = await find(session, route.name)
    if row is None:
        raise NotFound(f"route {route.name!r} not found", reason="ROUTE_NOT_FOUND")
    row.spec, row.updated_at = stored.SerializeToString(deterministic=True), now
    stored.updated_at.CopyFrom(to_timestamp(now))
    return stored


async def check_model_unused(
    session: AsyncSession, name: str, version: str, *, action: str
) -> None:
    """FAILED_PRECONDITION when deleting or archiving name@version would break a route.

    A route breaks if it names the version exactly, or names the model bare and
    no other version that is not archived would be left.
    """
    targets = [RouteRefRow.target_version == version]
    if not await models.has_other_routable_version(session, name, version):
        targets.append(RouteRefRow.target_version == "")
    users = await _users(
        session, RouteRefRow.target_kind == "model", RouteRefRow.target_name == name, or_(*targets)
    )
    if users:
        raise FailedPrecondition(
            f"cannot {action} model {name}@{version}: used by {_describe(users)}; "
            "change or delete those routes first (`modelyard routes list`)",
            reason="MODEL_IN_USE",
            metadata={"model": name, "version": version, "routes": _route_names(users)},
        )


async def check_route_unused(session: AsyncSession, name: str) -> None:
    users = await _users(
        session, RouteRefRow.target_kind == "route", RouteRefRow.target_name == name
    )
    if users:
        raise FailedPrecondition(
            f"cannot delete route {name!r}: it is a fallback of {_describe(users)}; "
            "change those routes first",
            reason="ROUTE_IN_USE",
            metadata={"route": name, "routes": _route_names(users)},
        )


async def _users(session: AsyncSession, *where: ColumnElement[bool]) -> list[tuple[str, str]]:
    rows = await session.execute(
        select(RouteRefRow.route_name, RouteRefRow.field)
        .where(*where)
        .order_by(RouteRefRow.route_name, RouteRefRow.field)
    )
    return [(route, field) for route, field in rows]


def _describe(users: Sequence[tuple[str, str]]) -> str:
    shown = ", ".join(f"route {route} ({field})" for route, field in users[:USERS_SHOWN])
    more = len(users) - USERS_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def _route_names(users: Sequence[tuple[str, str]]) -> str:
    return ",".join(sorted({route for route, _ in users}))
