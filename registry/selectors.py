"""Kubernetes-style equality label selectors: "team=search,tier!=free,gpu,!beta"."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from modelyard.errors import InvalidArgument

_KEY = re.compile(r"^[^\s=!,]+$")
# Each term becomes SQL conditions: a bound keeps queries small (SQLite refuses ~1,000).
MAX_TERMS = 32
MAX_CHARS = 4096


class Op(Enum):
    EQUALS = "="
    NOT_EQUALS = "!="
    EXISTS = "exists"
    NOT_EXISTS = "!exists"


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Op
    value: str = ""


def parse_label_selector(text: str, field: str = "label_selector") -> tuple[Requirement, ...]:
    """Parse a comma-separated selector; all requirements must hold (AND).

    `k=v` and `k==v` match the value; `k!=v` matches any other value or no
    label `k` (as in Kubernetes); `k` needs the label; `!k` needs its absence.
    """
    if not text.strip():
        return ()
    if len(text) > MAX_CHARS:
        raise InvalidArgument.for_field(
            field, f"{len(text)} characters; a selector may have at most {MAX_CHARS}"
        )
    terms = text.split(",")
    if len(terms) > MAX_TERMS:
        raise InvalidArgument.for_field(
            field, f"{len(terms)} terms; a selector may have at most {MAX_TERMS}"
        )
    return tuple(_parse_term(term.strip(), field) for term in terms)


def _parse_term(term: str, field: str) -> Requirement:
    if "!=" in term:
        key, _, value = term.partition("!=")
        op = Op.NOT_EQUALS
    elif "=" in term:
        key, _, value = term.partition("==" if "==" in term else "=")
        op = Op.EQUALS
    elif term.startswith("!"):
        key, value, op = term[1:], "", Op.NOT_EXISTS
    else:
        key, value, op = term, "", Op.EXISTS
    key, value = key.strip(), value.strip()
    if not _KEY.match(key) or any(c in value for c in "=!"):
        raise InvalidArgument.for_field(
            field,
            f"cannot parse {term!r}: use comma-separated key=value, key!=value, key or !key",
        )
    return Requirement(key, op, value)
