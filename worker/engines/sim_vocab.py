"""The simulated model's words: a fixed vocabulary, a tokenizer, and seeded token choice.

Token 0 is end-of-sequence; every other id is a made-up word of consonant-vowel
syllables with a leading space (" ba", " tonu", ...), so decoded text reads like
text, is the same on every machine, and stop sequences can match it. Prompts are
cut into words and punctuation (long words into pieces of `PIECE_CHARS`, about
the 4 characters a real tokenizer's token covers); a piece that is a vocabulary
word gets its id, any other a stable crc32 of its text, never Python's salted
`hash`. Each sequence draws its tokens from a `random.Random` seeded by its prompt
(and, when it samples, by its seed and sampling parameters): the same request
gives the same text, at the cost of one RNG call per token.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import zlib
from array import array
from collections.abc import Sequence

from modelyard.errors import InvalidArgument
from worker.engines.base import ChatTurn, SamplingConfig, TokenLogprob, TopLogprob

EOS_ID = 0
FIRST_WORD_ID = 1
EOS_TEXT = "</s>"
PIECE_CHARS = 4
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_SYLLABLES = tuple(c + v for c in _CONSONANTS for v in _VOWELS)
_PIECES = re.compile(r"\w+|[^\w\s]")


def _word(index: int) -> str:
    """The index-th word: syllables in bijective base len(_SYLLABLES) (ba, be, ..., baba, ...)."""
    base, parts = len(_SYLLABLES), []
    index += 1
    while index:
        index, digit = divmod(index - 1, base)
        parts.append(_SYLLABLES[digit])
    return "".join(reversed(parts))


class SimVocabulary:
    def __init__(self, size: int) -> None:
        self.size = size
        words = [_word(i) for i in range(size - FIRST_WORD_ID)]
        self._texts = [EOS_TEXT, *(" " + w for w in words)]
        self._ids = {w: i + FIRST_WORD_ID for i, w in enumerate(words)}

    @property
    def n_words(self) -> int:
        return self.size - FIRST_WORD_ID

    def text(self, token: int) -> str:
        return self._texts[token]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in _PIECES.findall(text.lower()):
            known = self._ids.get(piece)
            if known is not None:
                ids.append(known)
                continue
            for at in range(0, len(piece), PIECE_CHARS):
                chunk = piece[at : at + PIECE_CHARS].encode()
                ids.append(FIRST_WORD_ID + zlib.crc32(chunk) % self.n_words)
        return ids

    def render_chat(self, turns: Sequence[ChatTurn]) -> str:
        """The sim's chat template: 'role: content' lines, then the assistant's cue."""
        lines = [f"{t.role}{' ' + t.name if t.name else ''}: {t.content}" for t in turns]
        return "\n".join([*lines, "assistant:"])

    def check_ids(self, ids: Sequence[int]) -> None:
        if ids and not 0 <= min(ids) <= max(ids) < self.size:
            raise InvalidArgument.for_field(
                "prompt_token_ids", f"token ids must lie in [0, {self.size})"
            )


class SimSampler:
    """One sequence's token choice: the prompt (and sampling) seed a private RNG."""

    def __init__(
        self,
        prompt: Sequence[int],
        sampling: SamplingConfig,
        vocab: SimVocabulary,
        eos_probability: float,
    ) -> None:
        digest = hashlib.blake2b(array("q", prompt).tobytes(), digest_size=16)
        if sampling.temperature > 0:
            # Sampling: the seed and parameters matter; no seed is random, as in real engines.
            seed = sampling.seed if sampling.seed is not None else random.getrandbits(64)
            digest.update(repr((seed, sampling)).encode())
        self._rng = random.Random(digest.digest())
        self._n_words = vocab.n_words
        self._eos = eos_probability

    def logprob(self, token: int, vocab: SimVocabulary, top: int) -> TokenLogprob:
        """The sampler's true distribution: EOS with the EOS probability, every word alike
        (so the alternatives are EOS, when likelier, and the first words of the vocabulary)."""
        word = math.log((1 - self._eos) / self._n_words)
        eos = math.log(self._eos) if self._eos else -math.inf
        ranked = [(FIRST_WORD_ID + i, word) for i in range(min(top, self._n_words))]
        if eos > -math.inf:
            ranked.insert(0 if eos > word else len(ranked), (EOS_ID, eos))
        alternatives = tuple(TopLogprob(t, vocab.text(t).encode(), lp) for t, lp in ranked[:top])
        return TokenLogprob(token, vocab.text(token).encode(), word, alternatives)

    def next_token(self) -> int:
        rng = self._rng
        if self._eos and rng.random() < self._eos:
            return EOS_ID
        return FIRST_WORD_ID + rng.randrange(self._n_words)
