"""Word boundaries in recorded speech, and the mid-sentence points where a recording can be cut.

`word_bounds` runs faster-whisper's word timestamps with the local whisper-base model (CPU, int8, one thread,
English, greedy): a list of (word, start s, end s); whisper's hyphen continuations ("ill" "-disposed") are merged
into one word. `split_points` picks, between two words, the quietest 10 ms frame as the cut, at boundaries with
at least MIN_SIDE words on each side and not after the end of a sentence or a clause (comma, semicolon, colon):
the first part is, in practice, an incomplete sentence. Optionally (`quiet_db`) only where the speech dips to
near the noise floor.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

RATE = 16000
FRAME_S = 0.010
MIN_SIDE = 2  # words before and after a cut
# Whisper's word timestamps are off by up to ~0.1 s and read speech often has no gap between words: the quietest
# frame is looked for this far either side of the boundary (never past the middle of either word).
SEARCH_S = 0.12
# With split_points(quiet_db=QUIET_DB) a boundary qualifies when its quietest frame is at most this far above the
# recording's noise floor (its 10th-percentile frame): a real dip between words, not a cut through a voiced
# transition ("how much").
QUIET_DB = 12.0
SAME_CUT_S = 0.05
SENTENCE_END = (".", "?", "!")
CLAUSE_END = (",", ";", ":")  # the part before may well be complete ("eight of spades, | four of clubs")
ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr."}  # a full stop that ends no sentence

Word = tuple[str, float, float]


@lru_cache(maxsize=1)
def _model() -> Any:
    from faster_whisper import WhisperModel

    from models.assets import model_path

    return WhisperModel(str(model_path("whisper-base")), device="cpu", compute_type="int8", cpu_threads=1)


def word_bounds(samples: np.ndarray) -> list[Word]:
    """Words of 16 kHz float32 mono speech with their start and end in seconds."""
    audio = np.ascontiguousarray(samples, dtype=np.float32)
    segments, _ = _model().transcribe(audio, language="en", beam_size=1, word_timestamps=True,
                                      condition_on_previous_text=False, vad_filter=False)
    out: list[Word] = []
    for seg in segments:
        for w in seg.words or ():
            text = w.word.strip()
            if out and text.startswith("-"):  # whisper splits "ill-disposed" into "ill" "-disposed": one word
                prev = out[-1]
                out[-1] = (prev[0] + text, prev[1], max(prev[2], float(w.end)))
            elif text:
                out.append((text, float(w.start), float(w.end)))
    return out


def transcribe(samples: np.ndarray) -> list[str]:
    """The words of 16 kHz float32 mono speech, without timestamps (cheaper than `word_bounds`)."""
    audio = np.ascontiguousarray(samples, dtype=np.float32)
    segments, _ = _model().transcribe(audio, language="en", beam_size=1, without_timestamps=True,
                                      condition_on_previous_text=False, vad_filter=False)
    return " ".join(seg.text for seg in segments).split()


def quietest_frame(samples: np.ndarray, start_s: float, end_s: float) -> tuple[float, float]:
    """Centre (seconds) and level (dBFS) of the 10 ms frame with the least energy in [start_s, end_s]."""
    frame = int(RATE * FRAME_S)
    lo = max(0, int(start_s * RATE))
    hi = min(samples.size, max(int(end_s * RATE), lo + frame))
    levels = frame_levels(samples[lo:hi])
    if levels.size == 0:
        return (start_s + end_s) / 2, 0.0
    best = int(np.argmin(levels))
    return (lo + best * frame + frame / 2) / RATE, float(levels[best])


def frame_levels(samples: np.ndarray) -> np.ndarray:
    """dBFS of every whole 10 ms frame (from the first sample)."""
    frame = int(RATE * FRAME_S)
    n = samples.size // frame
    frames = samples[: n * frame].astype(np.float64).reshape(n, frame)
    return np.asarray(10.0 * np.log10(np.maximum(np.mean(frames * frames, axis=1), 1e-12)))


def split_points(samples: np.ndarray, words: list[Word], quiet_db: float | None = None) -> list[float]:
    """Cut times (seconds) at mid-sentence word boundaries: the quietest 10 ms frame between two words.

    A boundary qualifies when it has at least MIN_SIDE words before and after it and the word before it ends
    neither a sentence nor a clause; never after the last word. With `quiet_db` (QUIET_DB is a good value) only
    boundaries whose quietest frame is within that many dB of the noise floor qualify.
    """
    levels = frame_levels(samples)
    floor = float(np.percentile(levels, 10)) if levels.size else 0.0
    cuts: list[float] = []
    for i in range(MIN_SIDE, len(words) - MIN_SIDE + 1):
        before, after = words[i - 1], words[i]
        if before[0].endswith(CLAUSE_END) or (before[0].endswith(SENTENCE_END)
                                               and before[0].lower() not in ABBREVIATIONS):
            continue
        lo = max((before[1] + before[2]) / 2, min(before[2], after[1]) - SEARCH_S)
        hi = min((after[1] + after[2]) / 2, max(before[2], after[1]) + SEARCH_S)
        cut, level = quietest_frame(samples, lo, hi)
        # Two boundaries whose searches found the same dip are one cut (whisper's timestamps were off).
        if (quiet_db is None or level <= floor + quiet_db) and not (cuts and cut - cuts[-1] < SAME_CUT_S):
            cuts.append(cut)
    return cuts
