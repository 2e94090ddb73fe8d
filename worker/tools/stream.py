"""The engine's event stream with tool calls read out of its text (see worker.tools.parser):
text decoded as a call leaves `Piece.text` and arrives as `Piece.tool_calls`; token ids
stream unchanged (usage counts every token), and a generation that made calls finishes
with FinishReason.TOOL_CALLS."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, Sequence
from typing import Protocol

from worker.engines.base import EngineEvent, Finished, FinishReason, Piece, ToolCallPiece
from worker.tools.parser import Parsed, ParsedCall


class Parser(Protocol):
    def feed(self, text: str) -> Parsed: ...

    def finish(self) -> Parsed: ...


def call_pieces(calls: Sequence[ParsedCall], first: int) -> tuple[ToolCallPiece, ...]:
    return tuple(ToolCallPiece(first + i, c.id, c.name, c.arguments) for i, c in enumerate(calls))


class _Calls:
    """Turns one stream's events into events with tool calls, counting the calls made."""

    def __init__(self, parser: Parser) -> None:
        self._parser = parser
        self.made = 0

    def pieces(self, parsed: Parsed) -> tuple[ToolCallPiece, ...]:
        calls = call_pieces(parsed.calls, self.made)
        self.made += len(calls)
        return calls

    def convert(self, event: EngineEvent) -> list[EngineEvent]:
        if isinstance(event, Piece):
            return [self.piece(event)]
        if isinstance(event, Finished):
            return self.ending(event)
        return [event]

    def piece(self, event: Piece) -> Piece:
        parsed = self._parser.feed(event.text)
        return dataclasses.replace(event, text=parsed.text, tool_calls=self.pieces(parsed))

    def ending(self, event: Finished) -> list[EngineEvent]:
        parsed = self._parser.finish()
        calls = self.pieces(parsed)
        out: list[EngineEvent] = []
        if parsed.text or calls:
            out.append(Piece(parsed.text, (), tool_calls=calls))
        if self.made and event.reason is not FinishReason.CANCELLED:
            event = dataclasses.replace(event, reason=FinishReason.TOOL_CALLS)
        return [*out, event]


async def with_tool_calls(
    events: AsyncGenerator[EngineEvent, None], parser: Parser
) -> AsyncGenerator[EngineEvent, None]:
    calls = _Calls(parser)
    try:
        async for event in events:
            for out in calls.convert(event):
                yield out
    finally:
        await events.aclose()
