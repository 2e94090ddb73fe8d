"""The mesh's prefix hashing scheme, computed the same way by routers and workers.

A router cannot tokenize (it has neither the model's tokenizer nor its chat template), so
both sides describe a request by its canonical bytes instead: a chain of links, one per
chat message (role, name and content) or one per fixed-size block of a plain prompt. Each
link's hash covers everything before it too, so one hash names a whole prefix, and a
worker can publish the hashes of the prefixes its KV cache holds as a flat list
(worker.proto PrefixCacheSummary). Change anything here and SCHEME must change with it:
a router ignores summaries in a scheme it does not speak.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Protocol

SCHEME = "modelyard-prefix-v1"
PROMPT_BLOCK_BYTES = 256
# Links beyond this are not hashed: the work per request stays bounded, and a prefix
# longer than 512 messages or 128 KiB of prompt is matched on its first part only.
MAX_LINKS = 512
_EMPTY = bytes(8)


class Message(Protocol):
    """What the scheme reads of a chat message (common_pb2.ChatMessage has these)."""

    @property
    def role(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def content(self) -> str: ...


@dataclass(frozen=True, slots=True)
class PrefixChain:
    """A request's links: hashes[i] names the prefix ending at byte ends[i]."""

    hashes: tuple[int, ...]
    ends: tuple[int, ...]

    @property
    def total_bytes(self) -> int:
        return self.ends[-1] if self.ends else 0

    def held(self, held_hashes: Collection[int]) -> tuple[int, int]:
        """The longest leading prefix in held_hashes: (links, bytes); (0, 0) if none."""
        for i in range(len(self.hashes) - 1, -1, -1):
            if self.hashes[i] in held_hashes:
                return i + 1, self.ends[i]
        return 0, 0


def _chain(payloads: Iterable[bytes]) -> PrefixChain:
    hashes: list[int] = []
    ends: list[int] = []
    previous = _EMPTY
    covered = 0
    for payload in payloads:
        if len(hashes) == MAX_LINKS:
            break
        previous = hashlib.blake2b(previous + payload, digest_size=8).digest()
        covered += len(payload)
        hashes.append(int.from_bytes(previous, "big"))
        ends.append(covered)
    return PrefixChain(tuple(hashes), tuple(ends))


def _message_bytes(message: Message) -> bytes:
    # NUL cannot occur in a role or name the router accepts, so the fields cannot run together.
    return b"\0".join((message.role.encode(), message.name.encode(), message.content.encode()))


def chain_of_messages(messages: Iterable[Message]) -> PrefixChain:
    return _chain(_message_bytes(m) for m in messages)


def chain_of_prompt(prompt: str) -> PrefixChain:
    data = prompt.encode()
    step = PROMPT_BLOCK_BYTES
    # The last block may be short: a repeated prompt is matched whole, a longer prompt
    # that extends it up to its last full block.
    return _chain(data[i : i + step] for i in range(0, len(data), step))


def chain_of_request(prompt: str, messages: Iterable[Message]) -> PrefixChain:
    """The chain of a request that carries exactly one of prompt and messages."""
    return chain_of_prompt(prompt) if prompt else chain_of_messages(messages)
