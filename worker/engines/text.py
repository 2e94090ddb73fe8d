"""Turning a stream of token bytes into streamed text: UTF-8 reassembly and stop sequences.

A token may end in the middle of a multi-byte character, and a stop sequence may
arrive split across tokens. `TextStream` emits only complete characters and holds
back any tail that could still become a stop sequence, so a stop string is never
streamed and nothing after it either.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass


class Utf8Assembler:
    """Incremental UTF-8 decoding: bytes in, complete characters out."""

    def __init__(self) -> None:
        # "replace" keeps the stream going on invalid bytes (random-weight models emit them).
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data, final=False)

    def flush(self) -> str:
        """Whatever is left at the end of the stream (an incomplete character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Finds the first stop sequence in streamed text, holding back possible prefixes."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def push(self, text: str) -> tuple[str, str | None]:
        """Return (text safe to emit, matched stop or None). After a match, stop pushing."""
        buffer = self._held + text
        if not self._stops:
            self._held = ""
            return buffer, None
        match_at, matched = -1, None
        for stop in self._stops:
            at = buffer.find(stop)
            if at != -1 and (match_at == -1 or at < match_at):
                match_at, matched = at, stop
        if matched is not None:
            self._held = ""
            return buffer[:match_at], matched
        keep = self._longest_stop_prefix_suffix(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], None

    def flush(self) -> str:
        """Release held text when the stream ends without a match."""
        held, self._held = self._held, ""
        return held

    def _longest_stop_prefix_suffix(self, buffer: str) -> int:
        # Longest suffix of the buffer that is a proper prefix of some stop sequence.
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:n]):
                    best = n
                    break
        return best


@dataclass(frozen=True)
class TextChunk:
    text: str
    stop: str | None = None  # the stop sequence that ended the stream, if any


class TextStream:
    """Token bytes in, emit-ready text out: UTF-8 reassembly, then stop-sequence holdback."""

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self._utf8 = Utf8Assembler()
        self._stops = StopMatcher(stops)

    def feed(self, data: bytes) -> TextChunk:
        text, stop = self._stops.push(self._utf8.feed(data))
        return TextChunk(text, stop)

    def finish(self) -> TextChunk:
        """End of stream: flush the decoder through the matcher, then release held text."""
        text, stop = self._stops.push(self._utf8.flush())
        if stop is not None:
            return TextChunk(text, stop)
        return TextChunk(text + self._stops.flush())
