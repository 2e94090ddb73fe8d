"""Sentence-transformers style embeddings on transformers: AutoModel + the checkpoint's pooling.

The pooling comes from the checkpoint's `1_Pooling/config.json` (mean or CLS; mean
when there is none), as sentence-transformers reads it, so vectors match that library's
for the same checkpoint. Runs on the engine's owner thread, like its decoding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from worker.engines.base import EmbedRequest, EmbedResult, ModelSpec, Pooling
from worker.engines.embed_common import fit_tokens, pool


class HfEmbedder:
    def __init__(self, model: Any, tokenizer: Any, context: int, pooling: Pooling) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.context = context
        self.model_pooling = pooling

    def embed(self, req: EmbedRequest) -> EmbedResult:
        import torch

        pooling = self.model_pooling if req.pooling is Pooling.MODEL else req.pooling
        batches = [
            fit_tokens(i, self.tokenizer(text)["input_ids"], self.context, truncate=req.truncate)
            for i, text in enumerate(req.inputs)
        ]
        vectors: list[list[float]] = []
        with torch.inference_mode():
            # One input at a time: no padding, so mean pooling needs no mask.
            for ids in batches:
                states = self.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
                vectors.append(pool(states.tolist(), pooling))
        return EmbedResult(vectors, sum(len(ids) for ids in batches))


def checkpoint_pooling(where: Path) -> Pooling:
    config = where / "1_Pooling" / "config.json"
    if config.is_file():
        modes = json.loads(config.read_text())
        if modes.get("pooling_mode_cls_token"):
            return Pooling.CLS
        if modes.get("pooling_mode_lasttoken"):
            return Pooling.LAST
    return Pooling.MEAN


def open_embedder(spec: ModelSpec) -> HfEmbedder:
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(max(spec.threads, 1))
    where = spec.path if spec.path.is_dir() else spec.path.parent
    tokenizer = AutoTokenizer.from_pretrained(str(where))
    model = AutoModel.from_pretrained(str(where), dtype=torch.float32).eval()
    trained = int(getattr(model.config, "max_position_embeddings", 0) or spec.context_length)
    return HfEmbedder(
        model, tokenizer, min(spec.context_length, trained), checkpoint_pooling(where)
    )
