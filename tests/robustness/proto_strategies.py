"""Hypothesis strategies for any protobuf message, built from its descriptor.

The walk covers every field kind a client can put on the wire: scalars over their whole
range (NaN and infinities for floats), strings empty, ordinary and huge, enums with
numbers no version of the proto defines (proto3 enums are open), repeated fields, maps,
nested messages (to a bounded depth: Struct-like types recurse) and one member of each
oneof. `overrides` mixes chosen values into fields by full name (a real model name, so
a request gets past "not found" into the code behind it).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any, Literal, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

MAX_DEPTH = 3
_INT32 = (-(2**31), 2**31 - 1)
_UINT32 = (0, 2**32 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_UINT64 = (0, 2**64 - 1)

_F = FieldDescriptor
_INT_RANGES: Mapping[int, tuple[int, int]] = {
    _F.TYPE_INT32: _INT32,
    _F.TYPE_SINT32: _INT32,
    _F.TYPE_SFIXED32: _INT32,
    _F.TYPE_UINT32: _UINT32,
    _F.TYPE_FIXED32: _UINT32,
    _F.TYPE_INT64: _INT64,
    _F.TYPE_SINT64: _INT64,
    _F.TYPE_SFIXED64: _INT64,
    _F.TYPE_UINT64: _UINT64,
    _F.TYPE_FIXED64: _UINT64,
}

# Sizes that cross the services' bounds: a request id (128), a stop sequence (256),
# a label value, a selector (4096), and far beyond. (Whole messages over the transport's
# 4 MiB cost seconds each to generate: the fuzz modules send one such message apiece.)
HUGE_SIZES = (129, 257, 4097, 70_000)


def strings() -> st.SearchStrategy[str]:
    # one_of draws its branches about evenly: ordinary text most of the time.
    text = st.text(max_size=24)
    return st.one_of(
        text,
        text,
        text,
        st.text(alphabet="ab=,!@ \n\t*", max_size=40),  # selector and name syntax
        st.sampled_from(HUGE_SIZES).map(lambda n: "x" * n),
    )


def _floats(width: Literal[32, 64]) -> st.SearchStrategy[float]:
    return st.one_of(
        st.floats(width=width),  # NaN and +-inf included
        st.sampled_from([0.0, -1.0, 0.5, 1.0, 2.0, 1e30]),
    )


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        return st.one_of(st.integers(low, high), st.integers(-2, 300).filter(lambda v: v >= low))
    if kind == _F.TYPE_FLOAT:
        return _floats(32)
    if kind == _F.TYPE_DOUBLE:
        return _floats(64)
    if kind == _F.TYPE_BOOL:
        return st.booleans()
    if kind == _F.TYPE_STRING:
        return strings()
    if kind == _F.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == _F.TYPE_ENUM:
        enum = field.enum_type
        assert enum is not None
        known = [v.number for v in enum.values]
        # Any int32 is on the wire for an open enum: the unknown ones are the point.
        return st.one_of(st.sampled_from(known), st.integers(*_INT32))
    raise TypeError(f"no strategy for field type {kind} ({field.full_name})")


def _message_type(field: FieldDescriptor) -> Descriptor:
    message_type = field.message_type
    assert message_type is not None, field.full_name
    return message_type


def _is_map(field: FieldDescriptor) -> bool:
    return (
        field.type == _F.TYPE_MESSAGE
        and field.is_repeated
        and bool(_message_type(field).GetOptions().map_entry)
    )


class ProtoStrategies:
    """Strategies for messages, with `overrides` (field full name -> extra values)."""

    def __init__(self, overrides: Mapping[str, st.SearchStrategy[Any]] | None = None) -> None:
        self._overrides = dict(overrides or {})
        self._limits: dict[str, st.SearchStrategy[Any]] = {}
        self._of = cache(self._build)

    def limit(self, field: str, values: st.SearchStrategy[Any]) -> None:
        """Draw `field` (full name) from `values` only, instead of its whole range (call
        it before building strategies: they are cached)."""
        self._limits[field] = values

    def message(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        return self._of(descriptor, depth)

    def near(self, seed: Message, changes: int = 2) -> st.SearchStrategy[Message]:
        """`seed` (a valid request) with up to `changes` of its leaf fields replaced by
        random values: a request that is wrong in one place, or right, reaches the code
        a wholly random one never passes validation to."""
        paths = leaf_paths(cast(Descriptor, seed.DESCRIPTOR))
        if not paths:
            return st.just(seed)  # a message without fields: nothing to change
        enums = [p for p in paths if p[-1].type == _F.TYPE_ENUM]
        # Enum fields get half the picks: an unknown number there is what a lookup trips on.
        path = st.one_of(st.sampled_from(paths), st.sampled_from(enums or paths))
        chosen = st.lists(path, min_size=1, max_size=changes, unique=True)

        def values(paths: list[tuple[FieldDescriptor, ...]]) -> st.SearchStrategy[Message]:
            drawn = [self._leaf(p) for p in paths]
            return st.tuples(*drawn).map(lambda vs: _graft(seed, list(zip(paths, vs, strict=True))))

        return chosen.flatmap(values)

    def _leaf(self, path: tuple[FieldDescriptor, ...]) -> st.SearchStrategy[Any]:
        value = self._value(path[-1], len(path) - 1)
        return st.none() if value is None else value

    def _single(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if field.type == _F.TYPE_MESSAGE:
            base: st.SearchStrategy[Any] = self.message(_message_type(field), depth + 1)
        else:
            limited = self._limits.get(field.full_name)
            base = _scalar(field) if limited is None else limited
        extra = self._overrides.get(field.full_name)
        return base if extra is None else st.one_of(extra, extra, base)

    def _value(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
        """What one field may hold; None when it must stay unset (too deep)."""
        if field.type == _F.TYPE_MESSAGE and depth + 1 >= MAX_DEPTH:
            return None
        if _is_map(field):
            key_field = _message_type(field).fields_by_name["key"]
            value_field = _message_type(field).fields_by_name["value"]
            if value_field.type == _F.TYPE_MESSAGE and depth + 2 >= MAX_DEPTH:
                return None
            return st.dictionaries(
                _scalar(key_field), self._single(value_field, depth + 1), max_size=4
            )
        single = self._single(field, depth)
        if field.is_repeated:
            return st.lists(single, max_size=5)
        return single

    def _build(self, descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
        parts: list[st.SearchStrategy[tuple[FieldDescriptor, Any] | None]] = []
        for field in descriptor.fields:
            oneof = field.containing_oneof
            if oneof is not None and not oneof.name.startswith("_"):
                continue  # a real oneof: one member drawn below
            value = self._value(field, depth)
            if value is not None:
                parts.append(st.none() | st.tuples(st.just(field), value))
        for oneof in descriptor.oneofs:
            if oneof.name.startswith("_"):
                continue  # proto3 `optional`: its field is drawn above
            members = [
                st.tuples(st.just(f), v)
                for f in oneof.fields
                if (v := self._value(f, depth)) is not None
            ]
            parts.append(st.one_of(st.none(), *members))
        cls = GetMessageClass(descriptor)
        return st.tuples(*parts).map(lambda values: _assemble(cls, values))


def _assemble(
    cls: type[Message], values: tuple[tuple[FieldDescriptor, Any] | None, ...]
) -> Message:
    message = cls()
    for item in values:
        if item is None:
            continue
        field, value = item
        _set(message, field, value)
    return message


def _set(message: Message, field: FieldDescriptor, value: Any) -> None:
    target = getattr(message, field.name)
    if _is_map(field):
        for key, item in value.items():
            if isinstance(item, Message):
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif field.is_repeated:
        if field.type == _F.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.type == _F.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


def leaf_paths(descriptor: Descriptor, depth: int = 0) -> list[tuple[FieldDescriptor, ...]]:
    """Every field path down to scalars, repeated fields and maps (within MAX_DEPTH)."""
    out: list[tuple[FieldDescriptor, ...]] = []
    for field in descriptor.fields:
        nested = field.type == _F.TYPE_MESSAGE and not field.is_repeated
        if nested and depth + 1 < MAX_DEPTH:
            out += [(field, *rest) for rest in leaf_paths(_message_type(field), depth + 1)]
        elif not nested:
            out.append((field,))
    return out


def _graft(seed: Message, changes: list[tuple[tuple[FieldDescriptor, ...], Any]]) -> Message:
    """A copy of `seed` with the field at each path set to its new value."""
    result = type(seed)()
    result.CopyFrom(seed)
    for path, value in changes:
        into = result
        for field in path[:-1]:
            into = getattr(into, field.name)
        into.ClearField(path[-1].name)
        if value is not None:
            _set(into, path[-1], value)
    return result
