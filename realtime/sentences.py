"""Cut streaming LM text into pieces a speech decoder can say.

The first piece of a reply is cut early, because the time to the first audio is what a caller notices: at a
clause boundary, or before a word that opens a phrase ("I keep waking up | at three in the morning"), or after
FIRST_PIECE_MAX_WORDS words. A small CPU LM writes ~20 words a second, so a long first sentence used to keep the
caller waiting a second or more. Later pieces are whole sentences, which sound better.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?…](?:[\"')\]]*)\s+|\n+")
_CLAUSE_END = re.compile(r"[,;:—]\s+")
FIRST_CLAUSE_MIN_WORDS = 4
FIRST_PIECE_MAX_WORDS = 8
# Words a spoken phrase may start with: cutting before one leaves a pause where a speaker could take a breath.
PHRASE_STARTS = frozenset(
    "and but or so because which that who when where while if unless at in on for with from to about after before "
    "during since until into than".split()
)
# A piece never ends on a word that needs the next one ("three times a | week").
DANGLING = frozenset("a an the my your his her its our their this that these those of to very".split()) | PHRASE_STARTS
_WORD = re.compile(r"\S+")
MAX_PIECE_CHARS = 220


class SentenceSplitter:
    def __init__(self) -> None:
        self._buffer = ""
        self._emitted = 0

    def push(self, text: str) -> list[str]:
        self._buffer += text
        pieces: list[str] = []
        while True:
            cut = self._next_cut()
            if cut is None:
                break
            piece, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if piece:
                pieces.append(piece)
                self._emitted += 1
        return pieces

    def flush(self) -> list[str]:
        piece, self._buffer = self._buffer.strip(), ""
        return [piece] if piece else []

    def _next_cut(self) -> int | None:
        m = _SENTENCE_END.search(self._buffer)
        if m:
            return m.end()
        if self._emitted == 0:
            for c in _CLAUSE_END.finditer(self._buffer):
                if len(self._buffer[: c.start()].split()) >= FIRST_CLAUSE_MIN_WORDS:
                    return c.end()
            cut = self._first_phrase_cut()
            if cut is not None:
                return cut
        if len(self._buffer) > MAX_PIECE_CHARS:
            space = self._buffer.rfind(" ", 0, MAX_PIECE_CHARS)
            return space + 1 if space > 0 else MAX_PIECE_CHARS
        return None


    def _first_phrase_cut(self) -> int | None:
        # Only whole words count: the last one may still grow ("a" → "about").
        words = [w for w in _WORD.finditer(self._buffer) if w.end() < len(self._buffer)]
        for i, w in enumerate(words):
            if i >= FIRST_CLAUSE_MIN_WORDS and w.group().lower() in PHRASE_STARTS:
                return w.start()
            if i >= FIRST_PIECE_MAX_WORDS and words[i - 1].group().lower() not in DANGLING:
                return w.start()
        return None


def heard_prefix(pieces: list[tuple[str, float]], played_ms: float) -> str:
    """The words a listener heard after `played_ms` of audio made of (text, duration_ms) pieces.

    Within the piece that was cut, words are assumed evenly spaced: decoders here give no word timings.
    """
    words: list[str] = []
    remaining = played_ms
    for text, duration in pieces:
        piece_words = text.split()
        if remaining >= duration:
            words.extend(piece_words)
            remaining -= duration
            continue
        if duration > 0 and piece_words:
            words.extend(piece_words[: int(len(piece_words) * remaining / duration)])
        break
    return " ".join(words)
