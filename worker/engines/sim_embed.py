"""The simulated engine's embeddings: deterministic vectors from a hash of each text.

Equal texts get equal vectors and different texts unrelated ones (no semantics): enough
for routing, admission and API tests that must not load a real model.
"""

from __future__ import annotations

import hashlib
import random

from worker.engines.base import EmbedRequest, EmbedResult
from worker.engines.embed_common import fit_tokens
from worker.engines.sim_vocab import SimVocabulary


def sim_embed(req: EmbedRequest, vocab: SimVocabulary, context: int, dims: int) -> EmbedResult:
    vectors: list[list[float]] = []
    tokens = 0
    for i, text in enumerate(req.inputs):
        tokens += len(fit_tokens(i, vocab.encode(text), context, truncate=req.truncate))
        seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
        rng = random.Random(seed)
        vectors.append([rng.gauss(0.0, 1.0) for _ in range(dims)])
    return EmbedResult(vectors, tokens)
