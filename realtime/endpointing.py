"""The end of a turn: how much silence a pause needs before it ends the caller's turn.

With `turn_detection = "silence"` every pause needs `end_of_turn_ms`. With `"semantic"` a model scores, at each
pause, how likely it is that the caller has finished (models.interfaces.TurnDetector, e.g. Smart Turn on the turn's
audio) and the silence needed follows the score: a turn that sounds finished ends after a short silence, one that
sounds unfinished ("Press 4 to mark | ... this message as urgent") is waited for up to `max_end_of_turn_ms`.
Until the score is in (a few tens of ms after the VAD's stop) the plain silence rule holds, so a slow or missing
model never makes the caller wait longer than silence detection would.
"""

from __future__ import annotations

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


def silence_needed_ms(settings: SessionConfig, probability: float | None) -> float:
    """The silence after the caller's speech end that ends the turn, given the turn's score (None: not in)."""
    if settings.turn_detection == "silence" or probability is None:
        return float(settings.end_of_turn_ms)
    e = EAGERNESS[settings.eagerness]
    if probability >= e.threshold:
        return float(min(e.finished_ms, settings.end_of_turn_ms))
    # Below the threshold, the less finished the turn sounds the longer the wait: end_of_turn_ms just under the
    # threshold (a doubtful score costs no more than silence detection), the cap at a score of 0.
    cap = max(float(settings.end_of_turn_ms), settings.max_end_of_turn_ms * e.cap_factor)
    return settings.end_of_turn_ms + (cap - settings.end_of_turn_ms) * (1.0 - probability / e.threshold)
