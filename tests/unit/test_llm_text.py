"""Incremental detokenisation and stop strings (no model: a one-character-per-token stub)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from serving.llm.text import REPLACEMENT, TextStream


class CharTokenizer:
    """Token i is chr(i); 0xFFFD stands for a byte sequence that is not complete yet."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


def ids(text: str) -> list[int]:
    return [ord(c) for c in text]


def stream(text: str, stop: tuple[str, ...]) -> tuple[str, TextStream]:
    ts = TextStream(CharTokenizer(), stop)
    out = "".join(ts.update(ids(text[: i + 1])) for i in range(len(text)))
    return out + ts.update(ids(text), final=True), ts


def test_stop_string_ends_the_text_and_is_never_emitted() -> None:
    out, ts = stream("Plan: biopsy. END more text", ("END",))
    assert out == "Plan: biopsy. " and ts.stopped


def test_a_possible_stop_prefix_is_held_back_until_it_is_not_one() -> None:
    ts = TextStream(CharTokenizer(), ("STOP",))
    assert ts.update(ids("ab ST")) == "ab "
    assert ts.update(ids("ab STA")) == "STA"


def test_incomplete_characters_wait_for_the_next_token() -> None:
    ts = TextStream(CharTokenizer())
    assert ts.update([ord("a"), ord(REPLACEMENT)]) == "a"
    assert ts.update([ord("a"), ord("é")]) == "é"


@given(st.text(alphabet="abc XY", max_size=40), st.lists(st.text("abXY", min_size=1,
                                                                   max_size=3), max_size=3))
def test_streamed_deltas_concatenate_to_the_final_text(text: str, stops: list[str]) -> None:
    out, ts = stream(text, tuple(stops))
    assert out == ts.text
    assert not any(s in out for s in stops)
