"""Reading tool calls back out of decoded text.

`MarkerParser` (tool choice AUTO): text passes through until a `<tool_call>` marker, which
may arrive split across pieces (a tail that could still begin one is held back); the
block up to `</tool_call>` (or the end of the stream) is then buffered and, when it is a
JSON object naming a defined tool with object arguments, becomes a call. A block that is
not a valid call is given back as text, so nothing the model wrote is lost.

`WholeParser` (REQUIRED, FUNCTION: the output was constrained to one call) reads the
whole output as the call.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection
from dataclasses import dataclass

from worker.engines.tool_prompt import CALL_CLOSE, CALL_OPEN


@dataclass(frozen=True)
class ParsedCall:
    id: str
    name: str
    arguments: str  # JSON object text


@dataclass(frozen=True)
class Parsed:
    text: str = ""
    calls: tuple[ParsedCall, ...] = ()


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def call_of(block: str, names: Collection[str]) -> ParsedCall | None:
    """The call a block's JSON names, or None when it is not a valid call."""
    try:
        value = json.loads(block)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    name, arguments = value.get("name"), value.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if name not in names or not isinstance(arguments, dict):
        return None
    text = json.dumps(arguments, ensure_ascii=False)
    return ParsedCall(new_call_id(), str(name), text)


def _held_prefix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


class MarkerParser:
    def __init__(self, names: Collection[str]) -> None:
        self._names = frozenset(names)
        self._pending = ""  # text not yet released (a possible marker start, or a block)
        self._in_call = False

    def feed(self, text: str) -> Parsed:
        self._pending += text
        out: list[str] = []
        calls: list[ParsedCall] = []
        while self._step(out, calls):
            pass
        return Parsed("".join(out), tuple(calls))

    def finish(self) -> Parsed:
        """End of stream: an open block is a call if its JSON is complete, else text."""
        pending, self._pending = self._pending, ""
        if not self._in_call:
            return Parsed(pending)
        self._in_call = False
        call = call_of(pending.strip(), self._names)
        return Parsed(calls=(call,)) if call is not None else Parsed(CALL_OPEN + pending)

    def _step(self, out: list[str], calls: list[ParsedCall]) -> bool:
        """Release what is certain; True while a complete block was consumed."""
        if not self._in_call:
            at = self._pending.find(CALL_OPEN)
            if at == -1:
                cut = len(self._pending) - _held_prefix(self._pending, CALL_OPEN)
                out.append(self._pending[:cut])
                self._pending = self._pending[cut:]
                return False
            out.append(self._pending[:at])
            self._pending = self._pending[at + len(CALL_OPEN) :]
            self._in_call = True
        end = self._pending.find(CALL_CLOSE)
        if end == -1:
            return False
        block, self._pending = self._pending[:end], self._pending[end + len(CALL_CLOSE) :]
        self._in_call = False
        call = call_of(block.strip(), self._names)
        if call is None:  # not a call after all: the model's text, as it wrote it
            out.append(f"{CALL_OPEN}{block}{CALL_CLOSE}")
        else:
            calls.append(call)
        return True


class WholeParser:
    def __init__(self, names: Collection[str]) -> None:
        self._names = frozenset(names)
        self._text: list[str] = []

    def feed(self, text: str) -> Parsed:
        self._text.append(text)
        return Parsed()

    def finish(self) -> Parsed:
        text = "".join(self._text)
        call = call_of(text.strip(), self._names)
        return Parsed(calls=(call,)) if call is not None else Parsed(text)
