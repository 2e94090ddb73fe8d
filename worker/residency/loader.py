"""From a registered model to a warm engine: fetch the weights (and a draft model's), size
them, build the engine's `ModelSpec`, open the engine and warm it up.

The loader is given its collaborators (the worker's settings, its artifact store and
its engine factories) and holds no residency state: `ModelManager` decides when to
load and what to evict; the loader only does the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from modelyard.errors import FailedPrecondition, ModelyardError
from modelyard.refs import ModelKey
from modelyard.v1 import common_pb2, model_pb2
from worker.artifacts import ArtifactStore, check_gguf_magic, parse_uri
from worker.config import MAX_PARALLEL_SEQUENCES
from worker.counters import SequenceCounters
from worker.engines import EngineFactory
from worker.engines.base import (
    EmbedRequest,
    Engine,
    EngineRequest,
    LoadedInfo,
    ModelSpec,
    SamplingConfig,
)
from worker.engines.llama_prefix import prefix_cache_tokens
from worker.engines.sim_options import sim_memory_bytes
from worker.residency.load_options import engine_extra, is_artifact_uri
from worker.residency.memory import estimate, rss_bytes
from worker.residency.progress import LoadPhase, ProgressPublisher
from worker.residency.state import PrefixReserve

if TYPE_CHECKING:
    from worker.config import WorkerSettings

log = logging.getLogger(__name__)

WARM_UP_PROMPT = "Hello"

EngineKind: TypeAlias = common_pb2.Engine.ValueType
# A draft model named by "name@version": the model this worker knows by that key, if any.
DraftLookup = Callable[[str], model_pb2.Model | None]


@dataclass(frozen=True)
class Fetched:
    """Verified local weights, held in the artifact cache until released."""

    paths: list[Path]  # the model's, then its draft model's if any
    draft_sha256: str = ""

    @property
    def path(self) -> Path:
        return self.paths[0]

    @property
    def draft(self) -> Path | None:
        return self.paths[1] if len(self.paths) > 1 else None


@dataclass(frozen=True)
class Opened:
    engine: Engine
    info: LoadedInfo
    measured_bytes: int  # growth of the process's resident set over the load and warm-up


@dataclass(frozen=True)
class Needed:
    """Memory a load needs; `prefix` is the part its cached prefixes may fill."""

    total: int
    prefix: PrefixReserve | None = None


class ModelLoader:
    def __init__(
        self,
        settings: WorkerSettings,
        store: ArtifactStore,
        engines: Mapping[EngineKind, EngineFactory],
    ) -> None:
        self._settings = settings
        self.store = store
        self.engines = engines

    def context_length(self, model: model_pb2.Model) -> int:
        cap = self._settings.context_length
        wanted = model.load_options.context_length or model.capabilities.context_length or cap
        return min(wanted, cap)

    def parallel(self, model: model_pb2.Model) -> int:
        """Sequences the engine is asked to decode together: the smaller of the model's
        load option and this worker's setting where set; 0: the engine's own default."""
        caps = [model.load_options.max_parallel_sequences, self._settings.max_parallel_sequences]
        set_caps = [c for c in caps if c > 0]
        return min([*set_caps, MAX_PARALLEL_SEQUENCES]) if set_caps else 0

    def slots(self, model: model_pb2.Model, info: LoadedInfo) -> int:
        """Requests admitted into the engine at once: what it batches, within the caps."""
        cap = self.parallel(model)
        batches = max(info.max_sequences, 1)
        return min(batches, cap) if cap else min(batches, MAX_PARALLEL_SEQUENCES)

    async def fetch(
        self,
        key: ModelKey,
        model: model_pb2.Model,
        kind: EngineKind,
        drafts: DraftLookup,
        progress: ProgressPublisher,
    ) -> Fetched:
        """The model's verified path (then its draft model's, if vLLM loads it), held."""
        progress.phase(_phase_for(model.artifact.uri))
        path = await self.store.fetch(model.artifact, progress=progress.bytes, retain=True)
        held = [path]
        try:
            if kind == common_pb2.ENGINE_LLAMA_CPP:
                await asyncio.to_thread(check_gguf_magic, path)
            draft = model.load_options.draft_model
            if not draft:
                return Fetched(held)
            if kind != common_pb2.ENGINE_VLLM:
                log.info("%s: draft model %s ignored (speculative decoding is vLLM's)", key, draft)
                return Fetched(held)
            artifact = _draft_artifact(key, draft, drafts)
            progress.phase(_phase_for(artifact.uri))
            held.append(await self.store.fetch(artifact, progress=progress.bytes, retain=True))
            return Fetched(held, artifact.sha256)
        except BaseException:
            self.release(held)
            raise

    def release(self, paths: Sequence[Path]) -> None:
        for path in paths:
            self.store.release(path)

    async def needed_bytes(self, model: model_pb2.Model, path: Path) -> Needed:
        """Bytes the model will take: the registered figure, else an estimate from the file
        with its prefix cache's reserve (which shrinks first when another model needs room)."""
        # A simulated model (engine `sim`) states its footprint: its file is only a token.
        if simulated := sim_memory_bytes(model.load_options.extra):
            return Needed(simulated)
        if model.resources.memory_bytes:
            return Needed(model.resources.memory_bytes)
        context = self.context_length(model)
        cached = prefix_cache_tokens(context, self._settings.prefix_cache_share)
        found = await asyncio.to_thread(estimate, path, context, cached)
        if not (found.prefix_tokens and found.prefix_token_bytes):
            return Needed(found.total)
        reserve = PrefixReserve(found.prefix_token_bytes, found.prefix_tokens, found.prefix_tokens)
        return Needed(found.total, reserve)

    def spec(
        self, key: ModelKey, model: model_pb2.Model, kind: EngineKind, fetched: Fetched
    ) -> ModelSpec:
        s = self._settings
        options = engine_extra(
            model,
            kind,
            draft=fetched.draft,
            draft_sha256=fetched.draft_sha256,
            extended=s.allowed_engine_options,
        )
        if options.dropped:
            log.warning(
                "%s: load_options.extra %s dropped: not options %s accepts here "
                "(MODELYARD_WORKER_ALLOWED_ENGINE_OPTIONS widens the list)",
                key,
                ", ".join(options.dropped),
                common_pb2.Engine.Name(kind),
            )
        return ModelSpec(
            key=key,
            path=fetched.path,
            context_length=self.context_length(model),
            threads=s.threads,
            batch_size=s.batch_size,
            max_parallel_sequences=self.parallel(model),
            token_delay_s=s.token_delay_ms / 1000,
            extra=options.extra,
            cache_dir=s.artifacts.cache_dir,
            prefix_cache_share=s.prefix_cache_share,
            embedding=model.capabilities.embedding,
        )

    async def open(
        self,
        kind: EngineKind,
        spec: ModelSpec,
        counters: SequenceCounters,
        progress: ProgressPublisher,
    ) -> Opened:
        """A loaded engine, warmed up unless a request waits for it; a library failure
        becomes ARTIFACT_CORRUPT."""
        engine = self.engines[kind](counters)
        before = rss_bytes()
        try:
            info = await engine.load(spec)
            # A request waiting for this load is its own warm-up: one more generation
            # first would only delay its first token (LoadModel and preload warm up).
            if not counters.snapshot().queued_requests:
                progress.phase(LoadPhase.WARM_UP)
                await warm_up(engine, embedding=spec.embedding)
        except BaseException as err:
            with contextlib.suppress(Exception):
                await engine.unload()
            if isinstance(err, ModelyardError) or not isinstance(err, Exception):
                raise
            # The engine's text and the local path stay in the log: a client learns only
            # which model and what to check.
            log.warning("cannot load %s from %s", spec.key, spec.path, exc_info=err)
            raise FailedPrecondition(
                f"cannot load {spec.key}: the {engine_name(kind)} engine refused the model file "
                "(corrupt, or a format or architecture this engine does not support); "
                "the worker log has the details",
                reason="ARTIFACT_CORRUPT",
            ) from err
        return Opened(engine, info, max(rss_bytes() - before, 0))


def engine_name(kind: EngineKind) -> str:
    return common_pb2.Engine.Name(kind).removeprefix("ENGINE_").lower()


async def warm_up(engine: Engine, *, embedding: bool = False) -> None:
    """One greedy token (one embedding) before the model is marked warm: first requests
    pay no first-use cost."""
    if embedding:
        await engine.embed(EmbedRequest([WARM_UP_PROMPT]))
        return
    request = EngineRequest(
        "warm-up", prompt=WARM_UP_PROMPT, sampling=SamplingConfig(temperature=0.0), max_tokens=1
    )
    stream = engine.generate(request)
    try:
        async for _ in stream:
            pass
    finally:
        await stream.aclose()


def _draft_artifact(key: ModelKey, draft: str, drafts: DraftLookup) -> model_pb2.Artifact:
    if is_artifact_uri(draft):
        return model_pb2.Artifact(uri=draft)
    known = drafts(draft)
    if known is None:
        raise FailedPrecondition(
            f"{key} names draft model {draft!r}, which this worker cannot resolve: a "
            "draft model must be registered and known to this worker (load it, or send it "
            "a request, first), or load_options.draft_model must be an artifact URI the "
            "worker can fetch (file://, http(s)://, s3://, hf://)",
            reason="DRAFT_MODEL_UNRESOLVED",
            metadata={"model": key, "draft_model": draft},
        )
    return known.artifact


def _phase_for(uri: str) -> LoadPhase:
    try:
        remote = parse_uri(uri).is_remote
    except ModelyardError:
        remote = False  # the fetch reports the bad URI
    return LoadPhase.FETCH if remote else LoadPhase.VERIFY
