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


def test_a_long_first_sentence_is_cut_before_a_phrase_or_after_a_few_words() -> None:
    def first_piece(text: str) -> str:
        s = SentenceSplitter()
        for token in text.split(" "):
            if pieces := s.push(token + " "):
                return pieces[0]
        return s.flush()[0]

    # The caller hears the first words after ~4 of them, not after the whole sentence.
    coffee = "Coffee can keep you awake for up to six hours after you drink it."
    assert first_piece(coffee) == "Coffee can keep you awake"
    assert first_piece("Most beginners do well running three times a week, at an easy pace.") == \
        "Most beginners do well running three times a week,"
    assert first_piece("Drinking a big glass of water every morning helps most people feel better.") == \
        "Drinking a big glass of water every morning"
    # Short sentences and short openings stay whole.
    assert first_piece("The capital of France is Paris. It is lovely.") == "The capital of France is Paris."
    assert first_piece("Try to sleep early.") == "Try to sleep early."
