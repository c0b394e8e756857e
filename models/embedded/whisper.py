"""faster-whisper as the embedded stack's streaming fixed-segment tokenizer.

Whisper is not a streaming model: CTranslate2 always encodes a 30 s window, so one call costs the same
(~0.45 s for base on 2 cores) whether the turn holds 1 s or 20 s of speech. What can be done before the user
pauses is the decoding: every `segment_ms` of new speech the stream re-transcribes the turn and keeps the words
two successive hypotheses agree on (local agreement). At the pause, `finalize` runs one more pass with those
agreed words forced as the decoder prefix, so only the encoder and the last few words remain to be computed.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
from faster_whisper import WhisperModel

from models.interfaces import UserInput

_NON_WORD = re.compile(r"[^\w\s']+", re.UNICODE)


def normalize(text: str) -> str:
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


class WhisperTokenizer:
    def __init__(self, model_dir: Path, segment_ms: int, threads: int, language: str) -> None:
        self.segment_ms = segment_ms
        self.language = language or None
        self.model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads)
        # One CTranslate2 model, many sessions: calls are serialised so two turns do not halve each other's speed.
        self._lock = threading.Lock()

    def open_stream(self) -> WhisperStream:
        return WhisperStream(self)

    def normalize(self, text: str) -> str:
        return normalize(text)

    def transcribe(self, audio: np.ndarray, prefix: str = "") -> str:
        if audio.size < 1600:  # under 0.1 s: nothing Whisper can read, and it would hallucinate
            return ""
        with self._lock:
            segments, _ = self.model.transcribe(
                audio,
                language=self.language,
                beam_size=1,
                without_timestamps=True,
                condition_on_previous_text=False,
                vad_filter=False,
                prefix=prefix or None,
            )
            return " ".join(s.text.strip() for s in segments).strip()


class WhisperStream:
    def __init__(self, model: WhisperTokenizer) -> None:
        self._model = model
        self.reset()

    def reset(self) -> None:
        self._previous: list[str] = []
        self._agreed: list[str] = []

    @property
    def agreed_prefix(self) -> str:
        return " ".join(self._agreed)

    def push_segment(self, turn_audio: np.ndarray) -> str:
        hypothesis = self._model.transcribe(turn_audio, self.agreed_prefix)
        words = hypothesis.split()
        # Keep words both hypotheses share, minus the last one: it may still be cut by the segment boundary.
        common = 0
        for a, b in zip(self._previous, words, strict=False):
            if a != b:
                break
            common += 1
        if common > len(self._agreed) + 1:
            self._agreed = words[: common - 1]
        self._previous = words
        return hypothesis

    def finalize(self, turn_audio: np.ndarray) -> UserInput:
        text = self._model.transcribe(turn_audio, self.agreed_prefix)
        if self._agreed and not normalize(text).startswith(normalize(self.agreed_prefix)):
            # The forced prefix did not fit the final audio (rare: a revision); transcribe unforced.
            text = self._model.transcribe(turn_audio)
        return UserInput(text=text, content=text, key=normalize(text))
