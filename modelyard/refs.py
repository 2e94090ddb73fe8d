"""Model references ("name" or "name@version") and name rules shared by all services."""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelyard.errors import InvalidArgument

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
AUTO = "auto"


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
