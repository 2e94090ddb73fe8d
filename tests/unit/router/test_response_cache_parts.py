"""The response cache's parts in isolation: which requests are cacheable, what the key
covers, what an entry keeps, and the in-process LRU's byte bound and TTL."""

from __future__ import annotations

import asyncio

import pytest

from modelyard.v1 import common_pb2, model_pb2, router_pb2
from router.cache.cache import ResponseCache, ttl_of
from router.cache.entry import BadEntry, Entry, Recorder
from router.cache.key import cache_key, cacheable
from router.cache.memory import MemoryBackend
from router.metrics import RouterMetrics

Sampling = common_pb2.SamplingParams
MODEL_1 = model_pb2.Model(name="tiny", version="1")
MODEL_2 = model_pb2.Model(name="tiny", version="2")


def req(sampling: Sampling, prompt: str = "Hello") -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(model="chat", prompt=prompt, sampling=sampling)


def test_only_greedy_or_seeded_requests_are_cacheable() -> None:
    assert cacheable(Sampling(temperature=0))
    assert cacheable(Sampling(temperature=0.8, seed=7))
    assert not cacheable(Sampling())  # temperature unset means 1.0: sampled
    assert not cacheable(Sampling(temperature=0.7))
    assert not cacheable(Sampling(top_p=0.5))


def test_defaults_written_out_or_left_unset_give_one_key() -> None:
    implicit = Sampling(temperature=0, stop=["b", "a"])
    explicit = Sampling(
        temperature=0,
        top_p=1.0,
        repetition_penalty=1.0,
        stop=["a", "b", "a"],
        response_format=common_pb2.ResponseFormat(type=common_pb2.RESPONSE_FORMAT_TYPE_TEXT),
        top_logprobs=3,  # meaningless without logprobs
    )
    assert cache_key(req(implicit), MODEL_1) == cache_key(req(explicit), MODEL_1)


@pytest.mark.parametrize(
    "changed",
    [
        Sampling(temperature=0, max_tokens=255),
        Sampling(temperature=0, top_k=40),
        Sampling(temperature=0, stop=["x"]),
        Sampling(temperature=0, seed=1),
        Sampling(temperature=0, logprobs=True),
        Sampling(temperature=0, logprobs=True, top_logprobs=2),
        Sampling(temperature=0, logit_bias={42: -100.0}),
        Sampling(
            temperature=0,
            response_format=common_pb2.ResponseFormat(
                type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT
            ),
        ),
        Sampling(temperature=0, repetition_penalty=1.1),
        Sampling(temperature=0, frequency_penalty=0.5),
    ],
)
def test_every_sampling_field_is_part_of_the_key(changed: Sampling) -> None:
    assert cache_key(req(changed), MODEL_1) != cache_key(req(Sampling(temperature=0)), MODEL_1)


def test_each_response_format_field_is_part_of_the_key() -> None:
    def key(**fmt: object) -> str:
        f = common_pb2.ResponseFormat(**fmt)  # type: ignore[arg-type]
        return cache_key(req(Sampling(temperature=0, response_format=f)), MODEL_1)

    grammar = common_pb2.RESPONSE_FORMAT_TYPE_GRAMMAR
    keys = {
        key(type=common_pb2.RESPONSE_FORMAT_TYPE_REGEX, regex="a"),
        key(type=common_pb2.RESPONSE_FORMAT_TYPE_REGEX, regex="b"),
        key(type=grammar, grammar='root ::= "a"', grammar_syntax=1),
        key(type=grammar, grammar='root ::= "b"', grammar_syntax=1),
        key(type=grammar, grammar='root ::= "b"', grammar_syntax=2),
    }
    assert len(keys) == 5


def test_model_version_prompt_messages_and_client_are_part_of_the_key() -> None:
    greedy = Sampling(temperature=0)
    base = cache_key(req(greedy), MODEL_1)
    assert cache_key(req(greedy), MODEL_2) != base
    assert cache_key(req(greedy, prompt="Hello!"), MODEL_1) != base
    assert cache_key(req(greedy), MODEL_1, client="alice") != base
    assert cache_key(req(greedy), MODEL_1, client="alice") != cache_key(
        req(greedy), MODEL_1, client="bob"
    )
    chat = router_pb2.GenerateRequest(
        model="chat", messages=[common_pb2.ChatMessage(role="user", content="Hello")]
    )
    chat.sampling.temperature = 0
    assert cache_key(chat, MODEL_1) != base


def finished(reason: common_pb2.FinishReason.ValueType) -> router_pb2.GenerateResponse:
    done = common_pb2.GenerationFinished(
        finish_reason=reason,
        usage=common_pb2.Usage(input_tokens=3, output_tokens=2),
        cost=common_pb2.Cost(total_usd=0.5),
        timings=common_pb2.Timings(ttft_ms=9),
    )
    return router_pb2.GenerateResponse(finished=done)


def stream(reason: common_pb2.FinishReason.ValueType, limit_bytes: int = 1 << 20) -> Recorder:
    recorder = Recorder(limit_bytes)
    recorder.see(router_pb2.GenerateResponse(started=common_pb2.GenerationStarted(model="tiny")))
    recorder.see(
        router_pb2.GenerateResponse(delta=common_pb2.TokenDelta(text="Hel", token_ids=[1]))
    )
    recorder.see(router_pb2.GenerateResponse(delta=common_pb2.TokenDelta(text="lo", token_ids=[2])))
    recorder.see(finished(reason))
    return recorder


def test_an_entry_keeps_the_text_ids_finish_and_usage_and_nothing_else() -> None:
    entry = stream(common_pb2.FINISH_REASON_STOP).entry()
    assert entry is not None

    back = Entry.decode(entry.encode())

    assert [(d.text, list(d.token_ids)) for d in back.deltas] == [("Hel", [1]), ("lo", [2])]
    assert back.finished.finish_reason == common_pb2.FINISH_REASON_STOP
    assert back.finished.usage.output_tokens == 2
    assert not back.finished.HasField("cost") and not back.finished.HasField("timings")


def test_a_stream_longer_than_an_entry_may_be_is_let_go_of_as_it_streams() -> None:
    long = stream(common_pb2.FINISH_REASON_STOP, limit_bytes=8)
    assert long.entry() is None
    assert not long._deltas  # nothing held for a stream the cache would refuse
    assert stream(common_pb2.FINISH_REASON_STOP, limit_bytes=64).entry() is not None


def test_unfinished_or_cancelled_streams_give_no_entry_and_garbage_is_refused() -> None:
    assert stream(common_pb2.FINISH_REASON_CANCELLED).entry() is None
    partial = Recorder()
    partial.see(router_pb2.GenerateResponse(delta=common_pb2.TokenDelta(text="Hel")))
    assert partial.entry() is None
    good = stream(common_pb2.FINISH_REASON_LENGTH).entry()
    assert good is not None
    for bad in (b"", b"something else", good.encode()[:-1]):
        with pytest.raises(BadEntry):
            Entry.decode(bad)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_lru_stays_under_its_byte_bound_dropping_the_least_recent() -> None:
    metrics = RouterMetrics().response_cache
    memory = MemoryBackend(1000, max_entry_bytes=400, on_evict=metrics.evictions.inc)
    for i in range(3):
        assert await memory.put(f"k{i}", bytes(300), 60)
    await memory.get("k0")  # k0 is now the most recent: k1 goes first

    assert await memory.put("k3", bytes(300), 60)

    assert memory.bytes_held == 900 <= memory.max_bytes
    assert await memory.get("k1") is None
    assert all([await memory.get(k) for k in ("k0", "k2", "k3")])
    assert metrics.evictions._value.get() == 1
    assert not await memory.put("big", bytes(401), 60)  # over the per-entry cap
    assert memory.bytes_held == 900 and await memory.get("big") is None
    for i in range(50):
        await memory.put(f"many{i}", bytes(1 + i * 7), 60)
        assert memory.bytes_held <= memory.max_bytes


async def test_entries_expire_after_their_ttl() -> None:
    clock = Clock()
    memory = MemoryBackend(10_000, max_entry_bytes=1000, clock=clock)
    await memory.put("k", b"v", ttl_of(0))  # 0: the default, 300 s
    await memory.put("short", b"v", 5)

    clock.now += 4.9
    assert await memory.get("short") == b"v"
    clock.now += 0.2
    assert await memory.get("short") is None
    assert await memory.get("k") == b"v"
    clock.now += 300
    assert await memory.get("k") is None
    assert memory.bytes_held == 0 and len(memory) == 0
    assert ttl_of(10**9) == 86400


class Broken:
    max_entry_bytes = 1 << 20

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def get(self, key: str) -> bytes | None:
        raise self.error

    async def put(self, key: str, value: bytes, ttl_s: float) -> bool:
        raise self.error

    async def close(self) -> None:
        pass


async def test_a_failing_backend_is_a_counted_miss_never_an_error() -> None:
    metrics = RouterMetrics().response_cache
    entry = stream(common_pb2.FINISH_REASON_STOP).entry()
    assert entry is not None
    for error in (ConnectionError("refused"), TimeoutError(), BadEntry("x")):
        cache = ResponseCache(Broken(error), metrics=metrics, pause_s=0)
        assert await cache.get("k") is None
        await cache.put("k", entry, 60)

    assert metrics.backend_errors.labels(op="get")._value.get() == 3
    assert metrics.backend_errors.labels(op="put")._value.get() == 3
    assert metrics.lookups.labels(result="miss")._value.get() == 3


class Hung:
    """A store that accepted the connection and never answers."""

    max_entry_bytes = 1 << 20

    async def get(self, key: str) -> bytes | None:
        await asyncio.Event().wait()
        return None

    async def put(self, key: str, value: bytes, ttl_s: float) -> bool:
        await asyncio.Event().wait()
        return True

    async def close(self) -> None:
        pass


async def test_a_hung_backend_costs_its_deadline_then_is_a_miss() -> None:
    metrics = RouterMetrics().response_cache
    cache = ResponseCache(Hung(), timeout_s=0.05, metrics=metrics, pause_s=0)
    entry = stream(common_pb2.FINISH_REASON_STOP).entry()
    assert entry is not None

    assert await asyncio.wait_for(cache.get("k"), 10) is None
    await asyncio.wait_for(cache.put("k", entry, 60), 10)

    assert metrics.backend_errors.labels(op="get")._value.get() == 1
    assert metrics.backend_errors.labels(op="put")._value.get() == 1


class Flaky:
    """A store that fails while `down`, and counts the calls that reach it."""

    max_entry_bytes = 1 << 20

    def __init__(self) -> None:
        self.down = True
        self.calls = 0
        self.data: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        self.calls += 1
        if self.down:
            raise ConnectionError("refused")
        return self.data.get(key)

    async def put(self, key: str, value: bytes, ttl_s: float) -> bool:
        self.calls += 1
        if self.down:
            raise ConnectionError("refused")
        self.data[key] = value
        return True

    async def close(self) -> None:
        pass


async def test_a_failed_store_is_left_alone_for_a_pause_then_tried_again() -> None:
    clock, flaky = Clock(), Flaky()
    cache = ResponseCache(flaky, pause_s=5, clock=clock)
    entry = stream(common_pb2.FINISH_REASON_STOP).entry()
    assert entry is not None

    assert await cache.get("k") is None
    await cache.put("k", entry, 60)
    assert await cache.get("k") is None
    assert flaky.calls == 1  # one failure, then nothing during the pause
    flaky.down = False
    clock.now += 5
    await cache.put("k", entry, 60)
    assert await cache.get("k") is not None
    assert flaky.calls == 3
