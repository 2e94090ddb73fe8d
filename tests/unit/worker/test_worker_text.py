"""UTF-8 reassembly across tokens and stop-sequence holdback."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from worker.engines.text import StopMatcher, TextStream, Utf8Assembler


def feed_all(stream: TextStream, pieces: list[bytes]) -> tuple[list[str], str | None]:
    out: list[str] = []
    for piece in pieces:
        chunk = stream.feed(piece)
        out.append(chunk.text)
        if chunk.stop is not None:
            return out, chunk.stop
    tail = stream.finish()
    out.append(tail.text)
    return out, tail.stop


def test_a_character_split_across_tokens_is_emitted_once_complete() -> None:
    utf8 = Utf8Assembler()
    e_acute = "é".encode()
    assert utf8.feed(b"caf" + e_acute[:1]) == "caf"
    assert utf8.feed(e_acute[1:]) == "é"


def test_a_four_byte_character_over_three_tokens() -> None:
    utf8 = Utf8Assembler()
    emoji = "🦙".encode()
    assert [utf8.feed(emoji[:1]), utf8.feed(emoji[1:3]), utf8.feed(emoji[3:])] == ["", "", "🦙"]


def test_invalid_bytes_become_replacement_characters_and_the_stream_goes_on() -> None:
    utf8 = Utf8Assembler()
    assert utf8.feed(b"a\xffb") == "a\ufffdb"
    assert utf8.feed(b"c") == "c"


def test_an_incomplete_character_at_the_end_is_flushed_as_a_replacement() -> None:
    utf8 = Utf8Assembler()
    assert utf8.feed("é".encode()[:1]) == ""
    assert utf8.flush() == "\ufffd"


def test_a_stop_sequence_split_across_tokens_is_never_emitted() -> None:
    out, stop = feed_all(TextStream(["STOP"]), [b"Hel", b"lo ST", b"OP and more"])
    assert out == ["Hel", "lo ", ""]
    assert stop == "STOP"


def test_held_text_that_turns_out_not_to_stop_is_released() -> None:
    out, stop = feed_all(TextStream(["STOP"]), [b"ST", b"ART"])
    assert out == ["", "START", ""]
    assert stop is None


def test_held_text_is_released_when_the_stream_ends() -> None:
    out, stop = feed_all(TextStream(["STOP"]), [b"abc ST"])
    assert out == ["abc ", "ST"]
    assert stop is None


def test_the_earliest_of_several_stop_sequences_wins() -> None:
    out, stop = feed_all(TextStream(["world", "lo w"]), [b"hello world"])
    assert "".join(out) == "hel"
    assert stop == "lo w"


def test_a_stop_sequence_with_a_multibyte_character_split_across_tokens() -> None:
    data = "ok é!".encode()
    out, stop = feed_all(TextStream(["é!"]), [data[:4], data[4:5], data[5:]])
    assert "".join(out) == "ok "
    assert stop == "é!"


def test_without_stop_sequences_nothing_is_held() -> None:
    matcher = StopMatcher([])
    assert matcher.push("abc") == ("abc", None)


@given(
    text=st.text(alphabet="abcé🦙 ", max_size=40),
    stops=st.lists(st.text(alphabet="abé🦙", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=10),
)
def test_streamed_text_equals_the_text_before_the_first_stop(
    text: str, stops: list[str], cuts: list[int]
) -> None:
    data = text.encode()
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    pieces = [data[a:b] for a, b in itertools.pairwise(points)]
    out, stop = feed_all(TextStream(stops), pieces)

    hits = [(text.find(s), i) for i, s in enumerate(stops) if s in text]
    if hits:
        at, _ = min(hits)
        assert "".join(out) == text[:at]
        assert stop is not None and text[at:].startswith(stop)
    else:
        assert "".join(out) == text
        assert stop is None
