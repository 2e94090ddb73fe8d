"""Model references ("name" or "name@version") and name rules shared by all services."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NewType, Protocol

from modelyard.errors import InvalidArgument

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
AUTO = "auto"

ModelKey = NewType("ModelKey", str)
"""A model version's one identity in maps, metrics and estimates: "name@version"."""


class _Versioned(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...


def model_key(name: str, version: str) -> ModelKey:
    """The only constructor of a ModelKey: every writer and reader of a per-model fact
    (latency estimates, residency, counters) must build its key here."""
    return ModelKey(f"{name}@{version}")


def key_of(model: _Versioned) -> ModelKey:
    """The key of anything with a name and a version (a Model, a ModelRef with a version)."""
    return model_key(model.name, model.version)


def split_key(key: ModelKey) -> tuple[str, str]:
    name, _, version = key.partition("@")
    return name, version


@dataclass(frozen=True)
class ModelRef:
    """A model name with an optional exact version."""

    name: str
    version: str = ""

    def __str__(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name


def check_name(value: str, field: str) -> str:
    if not NAME_PATTERN.match(value):
        raise InvalidArgument.for_field(
            field,
            f"{value!r} is not a valid name: use 1-128 lowercase letters, digits, '.', '_' "
            "or '-', starting with a letter or digit",
        )
    return value


def check_version(value: str, field: str) -> str:
    if not VERSION_PATTERN.match(value):
        raise InvalidArgument.for_field(
            field,
            f"{value!r} is not a valid version: use 1-128 letters, digits, '.', '_', '+' or '-'",
        )
    return value


def parse_ref(text: str, field: str = "model") -> ModelRef:
    """Parse "name" or "name@version", raising INVALID_ARGUMENT naming `field`."""
    name, sep, version = text.strip().partition("@")
    check_name(name, field)
    if sep:
        check_version(version, field)
    return ModelRef(name, version)
