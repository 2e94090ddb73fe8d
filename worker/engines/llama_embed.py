"""llama.cpp embedding models: a context with embeddings on, pooled here per request.

The context runs with llama.cpp's pooling off (per-token states), so one loaded
model serves every `Pooling` a request asks for; the model's own (its GGUF
`<arch>.pooling_type`) is the default. One batch covers the whole context because
encoder models (BERT) attend both ways and need an input in one micro-batch. The
worker's admission gives the model one slot, so one batch runs at a time; the lock
only guards against a misuse of that. Batches run on the process's llama.cpp compute
thread (`llama_compute`), between the generating models' steps.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from worker.engines.base import EmbedRequest, EmbedResult, ModelSpec, Pooling
from worker.engines.embed_common import fit_tokens, pool
from worker.engines.llama_compute import COMPUTE

# GGUF's llama_pooling_type values.
_GGUF_POOLING = {1: Pooling.MEAN, 2: Pooling.CLS, 3: Pooling.LAST}


class LlamaEmbedder:
    def __init__(self, llama: Any, key: str) -> None:
        self._llama = llama  # llama_cpp.Llama (untyped library)
        self._key = key
        self._lock = threading.Lock()
        self.context_length = int(llama.n_ctx())
        self.dimensions = int(llama.n_embd())
        self.model_pooling = _model_pooling(llama.metadata)

    @classmethod
    async def open(cls, spec: ModelSpec) -> LlamaEmbedder:
        return cls(await asyncio.to_thread(_open, spec), spec.key)

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        return await asyncio.wrap_future(COMPUTE.call(lambda: self._embed(req)))

    def close(self) -> None:
        with self._lock:  # a cancelled request's batch may still be running in its thread
            self._llama.close()

    def vocab_size(self) -> int:
        return int(self._llama.n_vocab())

    def _embed(self, req: EmbedRequest) -> EmbedResult:
        pooling = self.model_pooling if req.pooling is Pooling.MODEL else req.pooling
        with self._lock:
            # Checked before any is run: a bad input costs no compute.
            for i, text in enumerate(req.inputs):
                tokens = self._llama.tokenize(text.encode("utf-8"), add_bos=True, special=False)
                fit_tokens(i, tokens, self.context_length, truncate=req.truncate)
            vectors: list[list[float]] = []
            count = 0
            for text in req.inputs:
                # One input per call: llama-cpp-python's multi-sequence batch hands back
                # the wrong token rows for all but the first input when pooling is off.
                states, n = self._llama.embed(
                    [text], normalize=False, truncate=True, return_count=True
                )
                vectors.append(pool(states[0], pooling))
                count += int(n)
        return EmbedResult(vectors, count)


def _model_pooling(metadata: dict[str, str]) -> Pooling:
    arch = metadata.get("general.architecture", "")
    value = metadata.get(f"{arch}.pooling_type", "")
    return _GGUF_POOLING.get(int(value), Pooling.MEAN) if value.isdigit() else Pooling.MEAN


def _open(spec: ModelSpec) -> Any:
    import llama_cpp

    return llama_cpp.Llama(
        str(spec.path),
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE,
        n_ctx=spec.context_length,
        n_batch=spec.context_length,
        n_ubatch=spec.context_length,
        n_threads=spec.threads,
        n_threads_batch=spec.threads,
        n_gpu_layers=int(spec.extra.get("n_gpu_layers", "0")),
        verbose=False,
    )
