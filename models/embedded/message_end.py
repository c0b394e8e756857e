"""The LM's own reading of a transcript: how likely it is that the user's message ends where the words do.

Asked before a draft answers (GenerationOptions.score_turn_end): the prompt up to the end of the user's words,
their closing punctuation removed (Whisper ends a cut sentence with a full stop too), and then the probability
that the next token closes the message: a full stop, question mark or exclamation mark, or the end of message
itself. The prompt is the draft's own, decoded in the same pass (LlamaLM keeps one more row of logits), so the
reading costs no second model and no extra pass. Measured on Qwen2.5-0.5B over the human sentences and their
mid-sentence cuts (benchmarks/README.md, "The words as well as the audio"): most cuts under 0.02, whole sentences
0.1-0.6, short answers ("ten of clubs") 0.01-0.07; a cut that is a sentence of its own reads finished ("... in his
power" 0.17).
"""

from __future__ import annotations

import re

import numpy as np

_TRAILING = re.compile(r"[\s.?!,;:\u2026]+$")
_CLOSERS = {b".", b"?", b"!"}


def trim(text: str) -> str:
    """The user's words without their closing punctuation: what the LM is asked to continue."""
    return _TRAILING.sub("", text.strip())


def closing_tokens(pieces: list[bytes], stop_ids: set[int]) -> np.ndarray:
    """Every token that would close the message: the stop tokens, and those spelling ".", "?" or "!" (with
    spaces or newlines around them). `pieces`: every token's text, by id."""
    ids = set(stop_ids)
    ids.update(i for i, piece in enumerate(pieces) if piece.strip() in _CLOSERS)
    return np.array(sorted(ids), dtype=np.int64)


def probability(logits: np.ndarray, closing: np.ndarray) -> float:
    """Softmax mass of the closing tokens in one position's logits."""
    x = logits.astype(np.float64)
    x -= x.max()
    e = np.exp(x)
    return float(e[closing].sum() / e.sum())
