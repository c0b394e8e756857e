"""Local agreement between successive hypotheses of a growing turn (Macháček et al., 2023).

Whisper is not a streaming model: a pass re-reads the audio it is given. To keep the final pass short however
long the turn, the words that two successive passes agree on are *committed*: they will not change, their audio
is cut off, and later passes decode only the audio after the cut, with the committed text as their prompt. What
a pass still has to decode at the end of the turn is the unstable tail: the last second or two.

A cut is made only between two words that both passes saw, at the quietest 10 ms of the gap the aligner found
between them, never in the last `margin` of audio (word timings are least certain there), and only where that
gap is really quiet (25 dB below the loudest frame since the last cut): a cut inside a joined sound ("ill-|
disposed") garbled both halves. Once 3 s have gone by without such a gap (fluent read speech), the quietest agreed
gap will do, so the tail stays bounded. Measured with `python -m benchmarks.asr_replay` (31 turns: 7 human read
sentences of 2.8-7.1 s, 24 synthesized requests; whisper-base, 2 threads): WER 6.2 % against 6.6 % re-reading the
whole turn; final pass p50 112 / p95 145 / max 168 ms against 116 / 240 / 359 ms. Cutting at any agreed gap gave
WER 13.9 %; requiring 30 dB and no fallback, 5.8 % but a max of 347 ms.

D. Macháček, R. Dabre, O. Bojar (2023), "Turning Whisper into Real-Time Transcription System", IJCNLP-AACL 2023
System Demonstrations (the LocalAgreement-2 policy).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

_NON_WORD = re.compile(r"[^\w\s']+", re.UNICODE)
FRAME = 160  # 10 ms at 16 kHz
DEDUP_NGRAM = 5  # a new hypothesis may repeat up to this many of the last committed words at its start
RATE = 16000
MAX_TAIL_S = 3.0  # audio after the cut beyond which any agreed gap will do
QUIET_DB = 25.0  # a cut needs a frame this far below the turn's loudest: a real gap, not a joined word


def normalize(text: str) -> str:
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


@dataclass(frozen=True)
class Word:
    text: str  # as Whisper wrote it, leading space and punctuation included
    tokens: tuple[int, ...]
    start: int  # sample in the turn
    end: int

    @property
    def key(self) -> str:
        return normalize(self.text)


@dataclass
class LocalAgreement:
    committed: list[Word] = field(default_factory=list)
    pending: list[Word] = field(default_factory=list)  # the last hypothesis after the committed words
    cut: int = 0  # turn sample where the audio still to be decoded begins

    def reset(self) -> None:
        self.committed.clear()
        self.pending.clear()
        self.cut = 0

    def prompt_tokens(self) -> list[int]:
        return [t for w in self.committed for t in w.tokens]

    def text(self, tail: list[Word]) -> str:
        return "".join(w.text for w in [*self.committed, *self.without_repeats(tail)]).strip()

    def without_repeats(self, words: list[Word]) -> list[Word]:
        """Drop a start of `words` that repeats the end of the committed words (the prompt read back)."""
        return words[repeated(self.committed_keys(), [w.key for w in words]) :]

    def committed_keys(self) -> list[str]:
        return [w.key for w in self.committed]

    def update(self, words: list[Word], audio: np.ndarray, margin: int) -> bool:
        """A new hypothesis of the audio after the cut (`audio` is the whole turn so far); True if it moved."""
        words = self.without_repeats(attach_punctuation(words))
        agreed = 0
        for old, new in zip(self.pending, words, strict=False):
            if old.key != new.key or not new.key:
                break
            agreed += 1
        # Commit only words that another agreed-or-new word follows (a gap to cut in) and that end well before the
        # live edge.
        while agreed and (agreed >= len(words) or words[agreed - 1].end > audio.size - margin):
            agreed -= 1
        if not agreed:
            self.pending = words
            return False
        # The latest gap that is really quiet: cutting inside a sound ("ill-|disposed") garbles both halves. A turn
        # that has run long without one (fluent read speech) is cut at its quietest agreed gap instead, so what the
        # final pass decodes stays bounded.
        peak = _level(audio[self.cut :])
        gaps = []
        for n in range(agreed, 0, -1):
            last, after = words[n - 1], words[n]
            at = quietest(audio, last.end - 4 * FRAME, max(last.end, after.start) + 2 * FRAME)
            gaps.append((_level(audio[at : at + FRAME]), n, at))
        quiet = [g for g in gaps if g[0] <= peak - QUIET_DB]
        if quiet:
            _, agreed, at = quiet[0]
        elif audio.size - self.cut > MAX_TAIL_S * RATE:
            _, agreed, at = min(gaps)
        else:
            self.pending = words
            return False
        self.committed.extend(words[:agreed])
        self.pending = words[agreed:]
        self.cut = at
        return True


def repeated(done: list[str], new: list[str]) -> int:
    """How many of `new`'s first words (normalized) repeat the last words of `done`: the prompt's echo."""
    for n in range(min(DEDUP_NGRAM, len(done), len(new)), 0, -1):
        if new[:n] == done[-n:]:
            return n
    return 0


def attach_punctuation(words: list[Word]) -> list[Word]:
    """Whisper's aligner makes ".", "," or "?" words of their own; they belong to the word before them (and would
    otherwise stop every agreement at the first full stop)."""
    out: list[Word] = []
    for w in words:
        if out and not w.key:
            last = out[-1]
            out[-1] = Word(last.text + w.text, last.tokens + w.tokens, last.start, last.end)
        else:
            out.append(w)
    return out


def _level(x: np.ndarray) -> float:
    """Loudest 10 ms frame of `x`, dB relative to full scale."""
    n = x.size // FRAME
    if n == 0:
        return -120.0
    frames = x[: n * FRAME].reshape(n, FRAME)
    return float(10 * np.log10(max(float(np.einsum("ij,ij->i", frames, frames).max()) / FRAME, 1e-12)))


def quietest(audio: np.ndarray, lo: int, hi: int) -> int:
    """The start of the least energetic 10 ms frame in [lo, hi): where a cut is least likely to split a sound."""
    lo, hi = max(0, lo), min(audio.size, hi)
    n = (hi - lo) // FRAME
    if n <= 0:
        return max(0, min(lo, audio.size))
    frames = audio[lo : lo + n * FRAME].reshape(n, FRAME)
    return lo + int(np.argmin(np.einsum("ij,ij->i", frames, frames))) * FRAME
