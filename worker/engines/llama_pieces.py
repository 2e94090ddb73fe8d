"""Each token's text, asked of llama.cpp once per token and kept.

The batch decoder's thread needs a sampled token's bytes and whether it ends the
generation. Each ctypes call hands the GIL back and waits for it again behind the event
loop's gRPC work: at 8 streams that wait measured ~0.3 ms a token, against ~5 us for the
calls themselves. Kept per token, at most the vocabulary.
"""

from __future__ import annotations

from typing import Any


class TokenPieces:
    def __init__(self, model: Any) -> None:  # llama_cpp._internals.LlamaModel
        import llama_cpp

        self._llama_cpp = llama_cpp
        self._model = model
        self._vocab = llama_cpp.llama_model_get_vocab(model.model)
        self._pieces: dict[int, bytes | None] = {}

    def __call__(self, token: int) -> bytes | None:
        """The token's bytes; None for an end-of-generation token."""
        try:
            return self._pieces[token]
        except KeyError:
            eog = self._llama_cpp.llama_vocab_is_eog(self._vocab, token)
            piece = None if eog else bytes(self._model.detokenize([token]))
            self._pieces[token] = piece
            return piece
