"""What a client may ask of the router, checked at the edge before any work.

Enum fields must hold values this router knows (proto3 enums are open: an unknown number
would otherwise reach a lookup as a KeyError). Priority is capped per API key: shedding
other clients' requests (PRIORITY_CRITICAL) needs a key allowed to. The output of a request
that leaves max_tokens unset is capped per API key as well (`output_ceiling`). Internal hops
(router -> worker) do not apply this: a mixed-version mesh keeps working mid-upgrade.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

from modelyard.auth import Caller
from modelyard.errors import FieldViolation, InvalidArgument, PermissionDenied
from modelyard.v1 import common_pb2, router_pb2

Priority: TypeAlias = common_pb2.Priority.ValueType

_OBJECTIVES = frozenset(common_pb2.Objective.values())
_PRIORITIES = frozenset(common_pb2.Priority.values())


def priority_of(name: str) -> Priority:
    """PRIORITY_HIGH or HIGH (any case) -> the enum value; ValueError naming the choices."""
    text = name.strip().upper()
    text = text if text.startswith("PRIORITY_") else f"PRIORITY_{text}"
    names = [k for k in common_pb2.Priority.keys() if k != "PRIORITY_UNSPECIFIED"]  # noqa: SIM118
    if text not in names:
        raise ValueError(f"unknown priority {name!r}; one of {', '.join(names)}")
    return common_pb2.Priority.Value(text)


class ClientPolicy:
    def __init__(
        self,
        ceiling: Priority = common_pb2.PRIORITY_HIGH,
        key_ceilings: Mapping[str, Priority] | None = None,
        *,
        output_ceiling: int = 0,
        key_output_ceilings: Mapping[str, int] | None = None,
    ) -> None:
        self._ceiling = ceiling
        self._key_ceilings = dict(key_ceilings or {})
        self._output_ceiling = output_ceiling
        self._key_output_ceilings = dict(key_output_ceilings or {})

    def output_ceiling(self, caller: Caller | None) -> int:
        """The most tokens a request of `caller` without max_tokens may generate; 0: none."""
        key = caller.key_name if caller is not None else ""
        return self._key_output_ceilings.get(key, self._output_ceiling)

    def check(self, request: router_pb2.GenerateRequest, caller: Caller | None) -> None:
        bad: list[FieldViolation] = []
        if request.hints.objective not in _OBJECTIVES:
            bad.append(_unknown("hints.objective", request.hints.objective, common_pb2.Objective))
        if request.priority not in _PRIORITIES:
            bad.append(_unknown("priority", request.priority, common_pb2.Priority))
        if bad:
            raise InvalidArgument.for_violations(bad)
        key = caller.key_name if caller is not None else ""
        ceiling = self._key_ceilings.get(key, self._ceiling)
        if request.priority > ceiling:
            raise PermissionDenied(
                f"priority {common_pb2.Priority.Name(request.priority)} is above what "
                f"{'key ' + repr(key) if key else 'this client'} may ask for "
                f"({common_pb2.Priority.Name(ceiling)}); the router's "
                "MODELYARD_ROUTER_KEY_PRIORITY_CEILINGS grants more per key",
                reason="PRIORITY_NOT_ALLOWED",
            )


def _unknown(field: str, value: int, enum: object) -> FieldViolation:
    names = ", ".join(enum.keys())  # type: ignore[attr-defined]
    return FieldViolation(field, f"unknown value {value}; one of {names}")
