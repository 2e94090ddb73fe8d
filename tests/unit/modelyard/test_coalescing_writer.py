"""CoalescingWriter: tokens that wait on a slow client go out as one delta; an idle
writer sends at once; the producer's events are never changed; write errors surface."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from modelyard.errors import DeadlineExceeded
from modelyard.streaming import BoundedStream, CoalescingWriter
from modelyard.v1 import common_pb2, router_pb2

Event = router_pb2.GenerateResponse


class SlowClient:
    """A stream whose writes wait while `gate` is clear."""

    def __init__(self) -> None:
        self.sent: list[Event] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: BaseException | None = None

    async def write(self, message: Any) -> None:
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.sent.append(message)


def delta(text: str, *ids: int) -> Event:
    return Event(delta=common_pb2.TokenDelta(text=text, token_ids=list(ids)))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def writer_for(client: SlowClient) -> CoalescingWriter[Event]:
    return CoalescingWriter[Event](cast(BoundedStream, client))


async def test_an_idle_writer_sends_each_event_at_once() -> None:
    client = SlowClient()
    writer = writer_for(client)
    writer.put(Event(started=common_pb2.GenerationStarted(request_id="r")))
    await settle()
    for i in range(3):
        writer.put(delta(f"t{i}", i))
        await settle()
        assert client.sent[-1].delta.text == f"t{i}"  # sent before the next token came
    await writer.flush()
    assert len(client.sent) == 4


async def test_tokens_waiting_on_a_slow_client_go_out_as_one_delta() -> None:
    client = SlowClient()
    writer = writer_for(client)
    first = delta("Hel", 1)
    writer.put(first)
    await settle()  # written: the client now stalls
    client.gate.clear()
    second, third, fourth = delta("lo", 2), delta(", ", 3), delta("you", 4)
    writer.put(second)  # taken by the writer, blocked in the write
    await settle()
    writer.put(third)
    writer.put(fourth)
    writer.put(Event(finished=common_pb2.GenerationFinished()))
    client.gate.set()
    await writer.flush()
    kinds = [e.WhichOneof("event") for e in client.sent]
    assert kinds == ["delta", "delta", "delta", "finished"]
    assert [e.delta.text for e in client.sent[:3]] == ["Hel", "lo", ", you"]
    assert list(client.sent[2].delta.token_ids) == [3, 4]
    # The producer's own events are unchanged (a response cache may hold them).
    assert (third.delta.text, list(third.delta.token_ids)) == (", ", [3])
    assert (fourth.delta.text, list(fourth.delta.token_ids)) == ("you", [4])


async def test_tool_call_deltas_are_never_joined() -> None:
    client = SlowClient()
    client.gate.clear()
    writer = writer_for(client)
    call = Event(delta=common_pb2.TokenDelta(tool_calls=[common_pb2.ToolCallDelta(index=0)]))
    for event in (delta("a", 1), delta("b", 2), call, delta("c", 3), delta("d", 4)):
        writer.put(event)
    client.gate.set()
    await writer.flush()
    assert [e.delta.text for e in client.sent] == ["ab", "", "cd"]


async def test_a_failed_write_surfaces_at_the_next_put_and_at_flush() -> None:
    client = SlowClient()
    client.fail = DeadlineExceeded("the client read nothing")
    writer = writer_for(client)
    writer.put(delta("a", 1))
    await settle()
    with pytest.raises(DeadlineExceeded):
        writer.put(delta("b", 2))
    failing = writer_for(SlowClient())
    cast(SlowClient, failing._out).fail = DeadlineExceeded("gone")
    failing.put(delta("a", 1))
    with pytest.raises(DeadlineExceeded):
        await failing.flush()


async def test_cancel_drops_what_is_left() -> None:
    client = SlowClient()
    client.gate.clear()
    writer = writer_for(client)
    writer.put(delta("a", 1))
    await settle()
    writer.cancel()
    await settle()
    client.gate.set()
    await settle()
    assert client.sent == []


async def test_what_a_failing_producer_made_goes_out_before_its_error() -> None:
    client = SlowClient()
    client.gate.clear()

    async def events() -> AsyncIterator[Event]:
        yield delta("a", 1)
        yield delta("b", 2)
        raise DeadlineExceeded("decoding took too long")

    writer = writer_for(client)
    release = asyncio.get_running_loop().call_later(0.05, client.gate.set)
    with pytest.raises(DeadlineExceeded, match="decoding"):
        await writer.write_all(events())
    release.cancel()
    assert "".join(e.delta.text for e in client.sent) == "ab"
