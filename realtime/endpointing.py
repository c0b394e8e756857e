"""The end of a turn: how much silence a pause needs before it ends the caller's turn.

With `turn_detection = "silence"` every pause needs `end_of_turn_ms`. With `"semantic"` a model scores, at each
pause, how likely it is that the caller has finished (models.interfaces.TurnDetector, e.g. Smart Turn on the turn's
audio) and the silence needed follows the score: a turn that sounds finished ends after a short silence, one that
sounds unfinished ("Press 4 to mark | ... this message as urgent") is waited for up to `max_end_of_turn_ms`.
Until the score is in (a few tens of ms after the VAD's stop) the plain silence rule holds, so a slow or missing
model never makes the caller wait longer than silence detection would.

The words count too, where the stack's LM can say so (`ModelStack.transcript_turn`): the speculative draft reads,
before its first token, the LM's probability that the caller's message ends where the transcript does (its next
token a full stop, question mark or end of message). Audio and words fail differently: Smart Turn hears read
prosody as unfinished ("He was not an ill-disposed young man." 0.07) and a cut after a complete-sounding phrase
as finished ("And Mr. John Dashwood |" 0.97), where the LM reads the first as complete (0.28) and the second as cut
off (0.005). The two scores are averaged. The transcript's score comes with the draft's first token, so while it is
on its way a finished-sounding turn waits as silence detection would: the reply could not start sooner anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from realtime.config import SessionConfig


@dataclass(frozen=True)
class Eagerness:
    threshold: float  # a score at or above it: the caller has finished
    finished_ms: int  # the silence that ends a finished-sounding turn
    cap_factor: float  # an unfinished-sounding turn waits up to max_end_of_turn_ms times this


# OpenAI's semantic_vad names. "auto" is "medium", as there. Thresholds from `python -m benchmarks.turn_replay`
# (Smart Turn v3.2 on human sentences and the same sentences cut mid-way): 0.7 let 17 % of the cut sentences
# through against 29 % at 0.5, and kept no more whole sentences waiting (benchmarks/README.md).
EAGERNESS = {
    "high": Eagerness(threshold=0.5, finished_ms=200, cap_factor=0.6),
    "medium": Eagerness(threshold=0.7, finished_ms=300, cap_factor=1.0),
    "auto": Eagerness(threshold=0.7, finished_ms=300, cap_factor=1.0),
    "low": Eagerness(threshold=0.85, finished_ms=500, cap_factor=1.6),
}


def transcript_evidence(probability: float) -> float:
    """The LM's end-of-message probability on the audio score's [0, 1] scale.

    Its own scale is logarithmic: on the human sentences and their mid-sentence cuts (benchmarks/README.md, "The
    words as well as the audio"), most cuts score under 0.02, whole sentences 0.1-0.6 and short answers ("ten of
    clubs") 0.01-0.07. So 0.001 → 0, 0.01 → 0.5, 0.1 and above → 1.
    """
    return min(1.0, max(0.0, (math.log10(max(probability, 1e-9)) + 3.0) / 2.0))


def fused(audio: float, transcript: float | None) -> float:
    """The turn's score from the audio model's and, when it is in, the transcript's."""
    return audio if transcript is None else (audio + transcript_evidence(transcript)) / 2.0


def silence_needed_ms(settings: SessionConfig, probability: float | None, transcript: float | None = None,
                      transcript_pending: bool = False) -> float:
    """The silence after the caller's speech end that ends the turn.

    `probability`: the audio model's score (None: not in, or no model); `transcript`: the LM's end-of-message
    probability (None: not in, or not asked for); `transcript_pending`: it was asked for and is on its way.
    """
    if settings.turn_detection == "silence" or probability is None:
        return float(settings.end_of_turn_ms)
    probability = fused(probability, transcript)
    e = EAGERNESS[settings.eagerness]
    if probability >= e.threshold:
        needed = float(min(e.finished_ms, settings.end_of_turn_ms))
    else:
        # Below the threshold, the less finished the turn sounds the longer the wait: end_of_turn_ms just under
        # the threshold (a doubtful score costs no more than silence detection), the cap at a score of 0.
        cap = max(float(settings.end_of_turn_ms), settings.max_end_of_turn_ms * e.cap_factor)
        needed = settings.end_of_turn_ms + (cap - settings.end_of_turn_ms) * (1.0 - probability / e.threshold)
    if transcript_pending:
        needed = max(needed, float(settings.end_of_turn_ms))
    return needed
