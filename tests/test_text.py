"""Cutting LM text into speakable pieces, and mapping played audio back to the words heard."""

from __future__ import annotations

from realtime.sentences import SentenceSplitter, heard_prefix


def test_first_piece_is_cut_at_a_clause_and_later_ones_at_sentences() -> None:
    s = SentenceSplitter()
    pieces: list[str] = []
    for token in "Well, the capital of France, as you know, is Paris. It is lovely in spring. Yes".split(" "):
        pieces += s.push(token + " ")
    pieces += s.flush()
    assert pieces == ["Well, the capital of France,", "as you know, is Paris.", "It is lovely in spring.", "Yes"]


def test_numbers_and_runaway_text_are_handled() -> None:
    s = SentenceSplitter()
    assert s.push("Pi is 3.14 roughly") == []
    assert s.flush() == ["Pi is 3.14 roughly"]
    long = SentenceSplitter().push("word " * 100)
    assert long and all(len(p) <= 220 for p in long)


def test_heard_prefix_counts_whole_and_partial_pieces() -> None:
    pieces = [("One two three four.", 1000.0), ("Five six.", 500.0)]
    assert heard_prefix(pieces, 0) == ""
    assert heard_prefix(pieces, 500) == "One two"
    assert heard_prefix(pieces, 1000) == "One two three four."
    assert heard_prefix(pieces, 1250) == "One two three four. Five"
    assert heard_prefix(pieces, 5000) == "One two three four. Five six."
