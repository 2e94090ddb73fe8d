"""What the response cache stores for one request: the stream's deltas (text, token ids,
logprobs when asked for) and the finish (reason, stop sequence, usage), as bytes.

Only complete, successful generations are kept: `Recorder` collects a relayed stream
and gives an entry only once it saw GenerationFinished, never for a stream that was
cancelled or failed part way.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from modelyard.v1 import common_pb2, router_pb2

_MAGIC = b"MYRC1"
# A finish that says the answer is whole; a cancelled (or unknown) one is never kept.
_COMPLETE = frozenset(
    {
        common_pb2.FINISH_REASON_STOP,
        common_pb2.FINISH_REASON_LENGTH,
        common_pb2.FINISH_REASON_STOP_SEQUENCE,
        common_pb2.FINISH_REASON_CONTEXT_LENGTH,
    }
)
_LENGTH = struct.Struct(">I")


class BadEntry(ValueError):
    """Stored bytes that are not an entry (another writer, a truncated value)."""


@dataclass(frozen=True)
class Entry:
    deltas: tuple[common_pb2.TokenDelta, ...]
    finished: common_pb2.GenerationFinished  # finish_reason, stop_sequence, usage only

    def encode(self) -> bytes:
        parts = [_MAGIC]
        for message in (self.finished, *self.deltas):
            body = message.SerializeToString()
            parts += [_LENGTH.pack(len(body)), body]
        return b"".join(parts)

    @staticmethod
    def decode(data: bytes) -> Entry:
        if not data.startswith(_MAGIC):
            raise BadEntry("not a response cache entry")
        bodies: list[bytes] = []
        at = len(_MAGIC)
        while at < len(data):
            if at + _LENGTH.size > len(data):
                raise BadEntry("truncated entry")
            (size,) = _LENGTH.unpack_from(data, at)
            at += _LENGTH.size
            if at + size > len(data):
                raise BadEntry("truncated entry")
            bodies.append(data[at : at + size])
            at += size
        if not bodies:
            raise BadEntry("entry without a finish")
        try:
            finished = common_pb2.GenerationFinished.FromString(bodies[0])
            deltas = tuple(common_pb2.TokenDelta.FromString(b) for b in bodies[1:])
        except DecodeError as err:
            raise BadEntry("undecodable entry") from err
        return Entry(deltas, finished)


class Recorder:
    """Collects the events of one relayed stream."""

    def __init__(self, limit_bytes: int = 1 << 20) -> None:
        self._deltas: list[common_pb2.TokenDelta] = []
        self._finished: common_pb2.GenerationFinished | None = None
        # A stream longer than the cache takes is let go of as it streams, not held
        # whole until its end only to be refused.
        self._room = limit_bytes

    def see(self, event: router_pb2.GenerateResponse) -> None:
        kind = event.WhichOneof("event")
        if kind == "delta":
            if self._room < 0:
                return
            self._room -= event.delta.ByteSize()
            if self._room < 0:
                self._deltas.clear()
                return
            self._deltas.append(event.delta)
        elif kind == "finished":
            done = event.finished
            self._finished = common_pb2.GenerationFinished(
                finish_reason=done.finish_reason,
                stop_sequence=done.stop_sequence,
                usage=done.usage,
            )

    def entry(self) -> Entry | None:
        """The entry, or None unless the stream finished whole."""
        if self._finished is None or self._finished.finish_reason not in _COMPLETE:
            return None
        if self._room < 0:
            return None
        return Entry(tuple(self._deltas), self._finished)
