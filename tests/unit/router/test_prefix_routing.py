"""Prefix routing end to end on two sim-engine workers and a router, over real gRPC.

Turn N+1 of a chat goes to the worker that served turn N while that worker's queue is
short, and elsewhere once the queue costs more than the prefill the prefix saves:
precisely, from the summaries the workers push, and approximately, from the router's
own routing history when the workers publish none (their prefix cache off).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from modelyard.prefix import chain_of_messages
from modelyard.v1 import common_pb2, model_pb2, router_pb2, worker_pb2, worker_pb2_grpc
from router.workers import WorkerHandle
from tests.robustness.sim_workers import artifact_in, load, sim_router, sim_worker
from tests.robustness.sim_workers import sim_model as robust_sim_model
from tests.unit.router.doubles import LOOP_SCOPE, RouterUnderTest, wait_until
from tests.unit.router.test_relay import collect

pytestmark = pytest.mark.asyncio(loop_scope=LOOP_SCOPE)

# ~700 prompt tokens of shared history at 2 ms each: the prefix saves over a second.
HISTORY = " ".join(f"fact {i} is known." for i in range(150))
# Each request that waits on the loaded worker queues ~3,000 tokens (seconds of decode).
LOAD_MAX_TOKENS = 3000
LOADERS = 4  # one runs, the rest queue: one sequence at a time on these workers
DEADLINE_S = 30.0


def message(role: str, content: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, content=content)


async def turn(router: RouterUnderTest, turns: list[common_pb2.ChatMessage]) -> tuple[str, str]:
    """One chat turn through the router: the worker that served it, and the reply."""
    request = router_pb2.GenerateRequest(
        model="sim",
        messages=turns,
        sampling=common_pb2.SamplingParams(max_tokens=8, temperature=0.0),
    )
    events = await collect(router.stub, request, DEADLINE_S)
    reply = "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")
    return events[0].started.worker_id, reply


async def until_published(handle: WorkerHandle, model: model_pb2.Model, link: int) -> None:
    await wait_until(lambda: link in (handle.prefix_held(model) or ()), DEADLINE_S)


@asynccontextmanager
async def load_on(address: str, model: model_pb2.Model) -> AsyncIterator[None]:
    """Long generations sent straight to one worker, so its queue fills; cancelled (the
    channel closed) on exit."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        request = worker_pb2.WorkerServiceGenerateRequest(model=model, prompt="keep busy")
        request.sampling.max_tokens = LOAD_MAX_TOKENS
        calls = [stub.Generate(request, timeout=120) for _ in range(LOADERS)]
        try:
            yield
        finally:
            for call in calls:
                call.cancel()


@pytest.mark.parametrize("published", [True, False], ids=["precise", "approximate"])
async def test_the_next_turn_follows_its_prefix_until_the_queue_costs_more(
    tmp_path: Path, published: bool
) -> None:
    model = robust_sim_model(artifact_in(tmp_path), "sim", sim_prefill_ms_per_token="2")
    # Cache share 0: the worker keeps no prefixes and publishes no summary.
    settings = {"max_parallel_sequences": 1, "prefix_cache_share": 0.5 if published else 0.0}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        sim_worker(tmp_path / "a", [model], worker_id="a", **settings) as a,
        sim_worker(tmp_path / "b", [model], worker_id="b", **settings) as b,
        sim_router([model], [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]) as router,
    ):
        handles = {h.address: h for h in router.pool.workers}
        for address in handles:  # both warm: only the prefix tells them apart
            await load(address, model)
        await wait_until(lambda: len(router.pool.warm_workers(model)) == 2, DEADLINE_S)
        turns = [message("system", HISTORY), message("user", "What is fact 7?")]
        first, reply = await turn(router, turns)
        holder = next(h for h in handles.values() if h.worker_id == first)

        for n in range(2):  # turns 2 and 3: the holder is idle
            turns += [message("assistant", reply), message("user", f"And fact {n}?")]
            if published:  # its summary shows the previous turn, reply included
                await until_published(holder, model, chain_of_messages(turns[:-1]).hashes[-1])
            else:
                assert holder.prefix_held(model) is None
            served, reply = await turn(router, turns)
            assert served == first, f"turn {n + 2} left the worker holding its prefix"

        async with load_on(holder.address, model):
            await wait_until(lambda: holder.queued_tokens() > 2 * LOAD_MAX_TOKENS, DEADLINE_S)
            turns += [message("assistant", reply), message("user", "And fact 9?")]
            served, _ = await turn(router, turns)
            assert served != first, "a long queue on the holder did not send the turn elsewhere"


async def test_a_prompt_counts_as_prefill_on_its_worker_until_its_first_token(
    tmp_path: Path,
) -> None:
    # ~700 prompt tokens at 20 ms each: 14 s of prefill, then 500 ms a token: long
    # enough to look at both.
    model = robust_sim_model(
        artifact_in(tmp_path),
        "sim",
        sim_prefill_ms_per_token="20",
        sim_decode_ms_per_token="500",
    )
    async with (
        sim_worker(tmp_path, [model], worker_id="a", max_parallel_sequences=1) as a,
        sim_router([model], [f"127.0.0.1:{a.port}"]) as router,
    ):
        address = f"127.0.0.1:{a.port}"
        await load(address, model)
        await wait_until(lambda: len(router.pool.warm_workers(model)) == 1, DEADLINE_S)
        prefilling = router.parts.relay.load.prefilling
        request = router_pb2.GenerateRequest(
            model="sim",
            messages=[message("system", HISTORY), message("user", "What is fact 7?")],
            sampling=common_pb2.SamplingParams(max_tokens=4, temperature=0.0),
        )
        call = router.stub.Generate(request, timeout=DEADLINE_S)
        await wait_until(lambda: prefilling[address] > 500, DEADLINE_S)
        kinds = []
        async for event in call:
            kinds.append(event.WhichOneof("event"))
            if kinds[-1] == "delta":  # decoding now: the prompt is the worker's past
                assert not prefilling
        assert kinds[-1] == "finished" and "delta" in kinds

        # A request cancelled during its prefill releases its count too. (Another
        # history: the router guesses the worker now holds the first one's.)
        del request.messages[:]
        request.messages.extend([message("system", "Unrelated. " + HISTORY), message("user", "?")])
        call = router.stub.Generate(request, timeout=DEADLINE_S)
        await wait_until(lambda: prefilling[address] > 500, DEADLINE_S)
        call.cancel()
        await wait_until(lambda: not prefilling, DEADLINE_S)
