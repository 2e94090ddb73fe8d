"""TokenPieces: the same bytes and end-of-generation answer as llama.cpp gives, from the
second ask on without asking it again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from worker.engines.llama_pieces import TokenPieces

TEXT = "Count: 1, 2, 3 — déjà vu"


@pytest.fixture(scope="module")
def model(smollm2_gguf: Path) -> Iterator[Any]:
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    loaded: Any = LlamaModel(path_model=str(smollm2_gguf), params=params, verbose=False)
    yield loaded
    loaded.close()


def test_pieces_match_llama_cpp_and_are_asked_once(model: Any) -> None:
    import llama_cpp

    pieces = TokenPieces(model)
    vocab = llama_cpp.llama_model_get_vocab(model.model)
    tokens = model.tokenize(TEXT.encode(), False, False)
    for token in tokens:
        assert pieces(token) == bytes(model.detokenize([token]))
    eos = llama_cpp.llama_vocab_eos(vocab)
    assert pieces(eos) is None

    asked: list[int] = []
    original = model.detokenize

    def counted(ts: list[int], *args: Any, **kwargs: Any) -> bytes:
        asked.extend(ts)
        return bytes(original(ts, *args, **kwargs))

    model.detokenize = counted
    try:
        joined = b"".join(pieces(t) or b"" for t in tokens)
        assert pieces(eos) is None
    finally:
        model.detokenize = original
    assert joined == TEXT.encode()
    assert asked == []
