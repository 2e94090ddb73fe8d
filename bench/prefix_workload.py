"""The prefix bench's two workloads, driven through one router, and what they measure.

- multi-turn chat: `sessions` concurrent sessions of `turns` turns each; every turn
  sends the whole history (a ~300-token system prompt of the session's own, then the
  user messages and the replies). Turn shapes follow LMSYS-Chat-1M's means (Zheng et
  al., ICLR 2024: ~70 tokens a user message, ~214 a reply): at scale 0.5 a ~75-token
  message asks for a list the model writes up to `reply_tokens`, and the history grows
  from ~320 to ~1,800 tokens;
- shared system prompt: `questions` short questions behind one ~1,000-token system
  prompt, `concurrency` at a time (RAG / agent style).

Every run's texts start with its own tag, so no run reuses a prefix another cached.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc

from modelyard.bundled import SMOLLM2_NAME
from modelyard.v1 import common_pb2, router_pb2, router_pb2_grpc

# A chat turn at scale 1.0: ~140 tokens of question (LMSYS-Chat-1M's ~70 at scale 0.5);
# a reply of LMSYS-Chat-1M's mean length. The question asks for a list, which SmolLM2
# writes to the limit (asked to summarise, it stops after ~40 tokens).
USER_SENTENCES = 6
REPLY_TOKENS = 214
ASK = " List every record above, one per line."


@dataclass(frozen=True)
class Sizes:
    """`scale` multiplies the texts' lengths (1.0: the sizes above); `max_tokens`: output
    tokens a shared-prompt answer; `think_ms`: the mean pause before a session's next turn
    (uniform in [0, 2x]); `reply_tokens` and `user_sentences` (at scale 1.0): a chat
    turn's reply and question."""

    scale: float = 1.0
    max_tokens: int = 16
    think_ms: float = 0.0
    reply_tokens: int = REPLY_TOKENS
    user_sentences: int = USER_SENTENCES


TIMEOUT_S = 900.0
COLOURS = ("red", "green", "blue", "amber", "violet", "grey", "white")
THINGS = ("lantern", "harbour", "ledger", "orchard", "furnace", "compass", "archive")


@dataclass(frozen=True)
class Sample:
    ttft_ms: float
    worker: str
    input_tokens: int
    cached_tokens: int
    session: str = ""  # multi-turn only: the session and its turn
    turn: int = 0
    output_tokens: int = 0
    sent_s: float = 0.0  # time.perf_counter() when it was sent, and when its stream ended
    ended_s: float = 0.0


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)

    def ttft(self, q: float) -> float:
        ordered = sorted(s.ttft_ms for s in self.samples)
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    @property
    def requests_per_s(self) -> float:
        return len(self.samples) / self.wall_s if self.wall_s else 0.0

    @property
    def output_tokens_per_s(self) -> float:
        out = sum(s.output_tokens for s in self.samples)
        return out / self.wall_s if self.wall_s else 0.0

    @property
    def cached_fraction(self) -> float:
        prompt = sum(s.input_tokens for s in self.samples)
        return sum(s.cached_tokens for s in self.samples) / prompt if prompt else 0.0

    @property
    def moved(self) -> float:
        """Multi-turn: the share of later turns served by another worker than the turn
        before (their history's KV is not there)."""
        last: dict[str, str] = {}
        moves = later = 0
        turns = [x for x in self.samples if x.session]
        for sample in sorted(turns, key=lambda x: (x.session, x.turn)):
            if sample.session in last:
                later += 1
                moves += last[sample.session] != sample.worker
            last[sample.session] = sample.worker
        return moves / later if later else 0.0

    def max_share(self, workers: int) -> float:
        """The busiest worker's share of requests over its fair share (1.0: even)."""
        counts = Counter(s.worker for s in self.samples)
        return max(counts.values()) / len(self.samples) * workers if self.samples else 0.0


def filler(tag: str, sentences: int) -> str:
    """About 15 tokens a sentence, distinct per tag."""
    return " ".join(
        f"Record {tag}.{i}: the {COLOURS[i % 7]} {THINGS[(i * 3) % 7]} number {i * 37 % 101} "
        f"weighs {i * 13 % 97} kilos."
        for i in range(sentences)
    )


def message(role: str, content: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, content=content)


async def ask(
    stub: Any,
    messages: list[common_pb2.ChatMessage],
    session: str,
    run: Run,
    max_tokens: int,
    turn: tuple[str, int] = ("", 0),
) -> str | None:
    """One chat request; its sample goes into `run`. The reply text, None if it failed."""
    request = router_pb2.GenerateRequest(
        model=SMOLLM2_NAME,
        messages=messages,
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0),
        hints=common_pb2.RoutingHints(session_key=session),
    )
    began = time.perf_counter()
    first: float | None = None
    worker, reply, usage = "", [], common_pb2.Usage()
    try:
        async for event in stub.Generate(request, timeout=TIMEOUT_S):
            kind = event.WhichOneof("event")
            if first is None and kind in ("delta", "finished"):
                first = time.perf_counter()
            if kind == "started":
                worker = event.started.worker_id
            elif kind == "delta":
                reply.append(event.delta.text)
            elif kind == "finished":
                usage = event.finished.usage
    except grpc.aio.AioRpcError as err:
        run.errors[err.code().name] += 1
        return None
    ttft = ((first or time.perf_counter()) - began) * 1000
    run.samples.append(
        Sample(
            ttft,
            worker,
            usage.input_tokens,
            usage.cached_input_tokens,
            *turn,
            output_tokens=usage.output_tokens,
            sent_s=began,
            ended_s=time.perf_counter(),
        )
    )
    return "".join(reply)


def sentences(count: int, scale: float) -> int:
    return max(1, round(count * scale))


async def multi_turn(
    address: str, tag: str, sessions: int, turns: int, sizes: Sizes, keyed: bool
) -> Run:
    """`keyed`: each request names its session (hints.session_key).

    Without think time a session's next turn arrives the moment its previous reply ends,
    which frees exactly the worker that served it: a load-only router then sends it back
    there and gets the cache for free. People read before they answer, so other sessions'
    turns arrive in between; `sizes.think_ms` models that (seeded, the same for every
    policy), and spreads the sessions' first turns the same way."""
    run = Run()
    pauses = random.Random(f"{sessions}-{turns}")
    think = [
        [pauses.uniform(0, 2 * sizes.think_ms) / 1000 for _ in range(turns)]
        for _ in range(sessions)
    ]
    system_n = sentences(20, sizes.scale)
    user_n = sentences(sizes.user_sentences, sizes.scale)

    async def session(s: int) -> None:
        history = [message("system", f"Session {tag}-{s}. " + filler(f"{tag}-{s}", system_n))]
        for t in range(turns):
            # Turn 0 too: sessions start spread out, as people arrive, not in one instant
            # (a burst of every first turn at once measures the burst, not the routing).
            await asyncio.sleep(think[s][t])
            history.append(message("user", filler(f"{tag}-{s}-{t}", user_n) + ASK))
            key = f"{tag}-{s}" if keyed else ""
            reply = await ask(stub, history, key, run, sizes.reply_tokens, (f"{s}", t))
            if reply is None:
                return
            history.append(message("assistant", reply))

    async with grpc.aio.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        began = time.perf_counter()
        await asyncio.gather(*(session(s) for s in range(sessions)))
        run.wall_s = time.perf_counter() - began
    return run


async def shared_prompt(
    address: str, tag: str, questions: int, concurrency: int, sizes: Sizes
) -> Run:
    run = Run()
    records = sentences(66, sizes.scale)
    system = message("system", f"Knowledge base {tag}. " + filler(tag, records))
    todo = list(range(questions))

    async def client() -> None:
        while todo:
            q = todo.pop()
            question = f"Question {q}: what does record {tag}.{q % records} weigh?"
            await ask(stub, [system, message("user", question)], "", run, sizes.max_tokens)

    async with grpc.aio.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        run.wall_s = time.perf_counter() - began
    return run


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))
