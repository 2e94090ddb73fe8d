"""The one protocol every engine implements, and the plain data it speaks.

The servicer and the model manager only see these types: an engine is loaded
from a `ModelSpec`, streams `EngineEvent`s for an `EngineRequest`, and is
aborted by closing (or cancelling) that stream.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from worker.counters import CounterSnapshot


@dataclass(frozen=True)
class ModelSpec:
    """What an engine needs to load one model version."""

    key: str  # "name@version"
    path: Path
    context_length: int  # tokens to allocate; already capped by the worker
    threads: int
    batch_size: int = 512
    # Sequences decoded together (continuous batching); 0: as many as the engine batches
    # by default. The engine reports what it configured in `LoadedInfo.max_sequences`.
    max_parallel_sequences: int = 0
    extra: Mapping[str, str] = field(default_factory=dict)
    # Simulated slowness: a pause after every decode step (tests, capacity drills).
    token_delay_s: float = 0.0
    # The worker's artifact cache: engines keep derived files (converted checkpoints) beside it.
    cache_dir: Path | None = None
    # Share of the context's KV cells finished requests' prefixes may keep (0: no reuse).
    prefix_cache_share: float = 0.0
    # The model's capabilities say it embeds: engines open it for Embed (llama.cpp then
    # opens an embedding context, which cannot generate).
    embedding: bool = False


@dataclass(frozen=True)
class LoadedInfo:
    engine: str
    context_length: int
    vocab_size: int
    has_chat_template: bool
    # Requests the engine decodes together (the worker's admission lets this many in).
    max_sequences: int = 1


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding parameters with the contract's defaults already applied."""

    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None  # None = random


@dataclass(frozen=True)
class ToolCallTurn:
    """A tool call an assistant turn made (arguments: the text of a JSON object)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatTurn:
    role: str
    content: str
    name: str = ""
    tool_calls: tuple[ToolCallTurn, ...] = ()  # role "assistant"
    tool_call_id: str = ""  # role "tool": the call this turn answers


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call; parameters is JSON Schema text ("" for any object)."""

    name: str
    description: str = ""
    parameters: str = ""


@dataclass(frozen=True)
class ToolPrompt:
    """The tools a chat prompt shows the model (see worker.engines.tool_prompt); `may_call` is
    False for tool choice NONE: the tools are shown, the model is told to answer in text."""

    tools: tuple[ToolSpec, ...]
    may_call: bool = True


@dataclass(frozen=True)
class OutputFormat:
    """Constrained decoding: text matching `regex` in full, or derived from `grammar` (in
    `grammar_syntax`: "gbnf" or "lark"), or else JSON valid against `json_schema` (JSON
    text), or any JSON object when that is None too. At most one of the three is set."""

    json_schema: str | None = None
    regex: str | None = None
    grammar: str | None = None
    grammar_syntax: Literal["gbnf", "lark"] = "gbnf"

    @property
    def field(self) -> str:
        """The request field an engine's refusal of this format names."""
        if self.regex is not None:
            return "sampling.response_format.regex"
        if self.grammar is not None:
            return "sampling.response_format.grammar"
        if self.json_schema is not None:
            return "sampling.response_format.json_schema"
        return "sampling.response_format"

    @property
    def is_json(self) -> bool:
        return self.regex is None and self.grammar is None


@dataclass(frozen=True)
class EngineRequest:
    """One generation: prompt_token_ids if set, else messages if any, else prompt."""

    request_id: str
    prompt: str = ""
    messages: Sequence[ChatTurn] = ()
    prompt_token_ids: Sequence[int] | None = None
    sampling: SamplingConfig = SamplingConfig()
    # The most tokens to generate; the worker resolves an unset SamplingParams.max_tokens
    # to its ceiling (worker.output_plan), at most the model's context.
    max_tokens: int = 256
    # > 0: max_tokens was unset, and this is the output length to plan for (KV cells
    # reserved up front, queued tokens) rather than max_tokens; engines may grow past it.
    expected_tokens: int = 0
    stop: Sequence[str] = ()
    # Kept out of SamplingConfig, whose repr seeds the sim engine's RNG.
    output_format: OutputFormat | None = None  # None: free text
    logit_bias: Mapping[int, float] = field(default_factory=dict)  # token id -> added logit
    logprobs: int | None = None  # None: none; else how many alternatives per token (0..20)
    tools: ToolPrompt | None = None  # chat only: the tools rendered into the prompt
    # > 0: after the first token, tokens reach the worker's stream at most this often,
    # those decoded meanwhile together (the worker's stream_interval_ms; channel engines).
    stream_interval_s: float = 0.0

    @property
    def planned_tokens(self) -> int:
        """The output length queues and reservations count for this request."""
        return min(self.expected_tokens, self.max_tokens) or self.max_tokens


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    STOP_SEQUENCE = "stop_sequence"
    CONTEXT_LENGTH = "context_length"
    CANCELLED = "cancelled"
    TOOL_CALLS = "tool_calls"  # set by worker.tools.stream, never by an engine


@dataclass(frozen=True)
class Scheduled:
    """The request left the queue and its prompt is being evaluated."""

    input_tokens: int


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    token: bytes  # the token's raw bytes (may be part of a UTF-8 character)
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log probability (log-softmax of the raw logits, as OpenAI
    reports it) and the most likely alternatives at its position, most likely first."""

    token_id: int
    token: bytes
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class ToolCallPiece:
    """A streamed tool call: the first piece of a call has its index, id and name; later
    pieces with the same index append to its arguments."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True)
class Piece:
    """Newly decoded tokens and the text they complete (may be empty mid-character)."""

    text: str
    token_ids: tuple[int, ...]
    # With EngineRequest.logprobs: one per token id, same order.
    logprobs: tuple[TokenLogprob, ...] = ()
    # Text decoded as tool calls (worker.tools.stream), instead of `text`.
    tool_calls: tuple[ToolCallPiece, ...] = ()


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    input_tokens: int
    output_tokens: int
    stop_sequence: str = ""
    # Prompt tokens served from the prefix cache instead of evaluated.
    cached_input_tokens: int = 0


EngineEvent = Scheduled | Piece | Finished


class Pooling(enum.Enum):
    """How per-token states become one vector; MODEL: the model's own (its config or GGUF)."""

    MODEL = "model"
    MEAN = "mean"
    CLS = "cls"
    LAST = "last"


@dataclass(frozen=True)
class EmbedRequest:
    """One batch of texts to embed; the worker has already checked the limits."""

    inputs: Sequence[str]
    pooling: Pooling = Pooling.MODEL
    # Cut an input longer than the context; else INVALID_ARGUMENT naming its index.
    truncate: bool = False


@dataclass(frozen=True)
class EmbedResult:
    """One raw (not normalized) vector per input, in input order, and the tokens read."""

    vectors: Sequence[Sequence[float]]
    input_tokens: int


class Engine(Protocol):
    name: str

    async def load(self, spec: ModelSpec) -> LoadedInfo: ...

    def generate(self, req: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
        """Stream Scheduled, then Pieces, then exactly one Finished; abort by closing the stream."""
        ...

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        """Embed a batch, or FAILED_PRECONDITION when this engine or model cannot."""
        ...

    def abort(self, request_id: str) -> None:
        """Stop the request's decoding (call on the event loop); its stream ends as CANCELLED."""
        ...

    async def unload(self) -> None:
        """Free the model; streams still running end with FinishReason.CANCELLED."""
        ...

    def stats(self) -> CounterSnapshot:
        """The model's counters (the same the worker's status reports)."""
        ...
