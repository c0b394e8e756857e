"""Whisper (CTranslate2, via faster-whisper's model files) as the embedded stack's fixed-segment tokenizer.

Whisper is not a streaming model: each pass re-reads the turn so far. faster-whisper always pads the encoder input
to Whisper's 30 s window, which costs ~0.45 s on two cores however short the turn. CTranslate2 itself accepts a
shorter window, so this stage calls it directly with a window of `window_s` (or the turn plus a second of
silence, if longer). Measured on 11 clips (5 human read sentences from pocketsphinx-testdata, 6 synthesized
requests), whisper-base, 2 threads, a loaded 2-core machine: 5 s window 229 ms a pass, WER 2.0%; 30 s window
795 ms, WER 0.9% (the difference: one word of one human sentence). A short window can make the
decoder loop ("Set a timer. Set a timer. Set a…"; tiny.en does it readily): a pass whose output repeats its own
tail, or runs out of its length budget, is redone with the full 30 s window.

While the user speaks the engine hands this stage each completed `segment_ms` of the turn and shows the
hypothesis as a live transcript. At a pause one pass over the whole turn is what is left to do: there is no
state a later pass could reuse.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer

from models.interfaces import UserInput

RATE = 16000
HOP = 160  # samples per mel frame
MAX_WINDOW_S = 30  # Whisper's training window: positions beyond it do not exist
TRAILING_SILENCE_S = 1.0
NO_SPEECH_THRESHOLD = 0.6
TOKENS_PER_SECOND = 8  # length budget: fast English speech is ~4 tokens/s
LOOP_TAIL = 4  # a tail of this many tokens already seen earlier in the same output = a decoder loop
_NON_WORD = re.compile(r"[^\w\s']+", re.UNICODE)


def normalize(text: str) -> str:
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


class WhisperTokenizer:
    def __init__(self, model_dir: Path, segment_ms: int, threads: int, language: str, window_s: float = 5.0) -> None:
        self.segment_ms = segment_ms
        self.language = language or None
        self.window_frames = int(min(MAX_WINDOW_S, max(1.0, window_s)) * RATE / HOP)
        self._whisper = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads)
        self._model: ctranslate2.models.Whisper = self._whisper.model
        # One CTranslate2 model, many sessions: passes are serialised so two turns do not halve each other's speed.
        self._lock = threading.Lock()

    def open_stream(self) -> WhisperStream:
        return WhisperStream(self)

    def normalize(self, text: str) -> str:
        return normalize(text)

    def transcribe(self, audio: np.ndarray) -> str:
        if audio.size < RATE // 10:  # under 0.1 s: nothing Whisper can read, and it would invent something
            return ""
        audio = audio[: (MAX_WINDOW_S - 1) * RATE]
        budget = 12 + int(audio.size / RATE * TOKENS_PER_SECOND)
        full = MAX_WINDOW_S * RATE // HOP
        frames = max(self.window_frames, int((audio.size / RATE + TRAILING_SILENCE_S) * RATE / HOP))
        frames = min(full, -(-frames // 100) * 100)
        with self._lock:
            tokenizer, ids, no_speech = self._pass(audio, frames, budget)
            if frames < full and (len(ids) >= budget or looped(ids)):
                tokenizer, ids, no_speech = self._pass(audio, full, budget)
        if no_speech > NO_SPEECH_THRESHOLD:
            return ""  # Whisper's own verdict: noise, a cough, a click — not words
        return tokenizer.decode(ids).strip()

    def _pass(self, audio: np.ndarray, frames: int, budget: int) -> tuple[Tokenizer, list[int], float]:
        padded = np.zeros(frames * HOP, np.float32)
        padded[: audio.size] = audio
        mel = self._whisper.feature_extractor(padded)[:, :frames]
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None], dtype=np.float32))
        language = self.language or self._detect(features)
        tokenizer = Tokenizer(self._whisper.hf_tokenizer, self._model.is_multilingual, task="transcribe",
                              language=language)
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        result = self._model.generate(
            features, [prompt], beam_size=1, max_length=budget, suppress_blank=True, suppress_tokens=[-1],
            return_no_speech_prob=True,
        )[0]
        return tokenizer, list(result.sequences_ids[0]), float(result.no_speech_prob)

    def _detect(self, features: ctranslate2.StorageView) -> str:
        scores = self._model.detect_language(features)[0]
        return str(scores[0][0]).strip("<|>")


def looped(ids: list[int]) -> bool:
    """The output's last tokens already occurred earlier in it: the decoder went round again."""
    if len(ids) < 2 * LOOP_TAIL:
        return False
    tail = ids[-LOOP_TAIL:]
    return any(ids[i : i + LOOP_TAIL] == tail for i in range(len(ids) - 2 * LOOP_TAIL + 1))


class WhisperStream:
    def __init__(self, model: WhisperTokenizer) -> None:
        self._model = model

    def reset(self) -> None:
        pass

    def push_segment(self, turn_audio: np.ndarray) -> str:
        return self._model.transcribe(turn_audio)

    def finalize(self, turn_audio: np.ndarray) -> UserInput:
        text = self._model.transcribe(turn_audio)
        return UserInput(text=text, content=text, key=normalize(text))
