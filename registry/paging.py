"""Opaque page tokens for ListModels: the sort key of the last row returned.

Keyset paging (rather than offsets) keeps pages stable while versions are
registered between calls. The token also carries a fingerprint of the
filters, so a token reused with other filters is refused instead of
silently skipping rows.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from modelyard.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class PageKey:
    """Rows sort by name, then newest (highest id) first; a page resumes after this key."""

    name: str
    id: int


def page_size_of(requested: int) -> int:
    """0 means the default; larger than the maximum is capped (AIP-158)."""
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(key: PageKey, fingerprint: str) -> str:
    raw = json.dumps([fingerprint, key.name, key.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_token(token: str, fingerprint: str, field: str = "page_token") -> PageKey:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError) as err:
        raise InvalidArgument.for_field(
            field, "not a token from a previous ListModels call; start again without it"
        ) from err
    match decoded:
        case [str(fp), str(name), int(row_id)] if fp == fingerprint:
            return PageKey(name, row_id)
        case [str(), str(), int()]:
            raise InvalidArgument.for_field(
                field, "the token belongs to a call with other filters; pass the same filters"
            )
    raise InvalidArgument.for_field(
        field, "not a token from a previous ListModels call; start again without it"
    )
