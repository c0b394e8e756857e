"""Cut streaming LM text into pieces a speech decoder can say.

The first piece of a reply is cut early, at a clause boundary, because the time to the first audio is what a
caller notices; later pieces are whole sentences, which sound better.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?…](?:[\"')\]]*)\s+|\n+")
_CLAUSE_END = re.compile(r"[,;:—]\s+")
FIRST_CLAUSE_MIN_WORDS = 4
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
        if len(self._buffer) > MAX_PIECE_CHARS:
            space = self._buffer.rfind(" ", 0, MAX_PIECE_CHARS)
            return space + 1 if space > 0 else MAX_PIECE_CHARS
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
