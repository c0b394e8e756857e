"""Whisper (CTranslate2, via faster-whisper's model files) as the embedded stack's fixed-segment tokenizer.

Whisper is not a streaming model, and on two cores its cost is mostly the decoder: ~9 ms a token, whatever the
audio length, forced prefix tokens included, against ~35-55 ms for the encoder over a 4-8 s window (measured,
whisper-base int8, 2 threads). A pass over a whole 7 s sentence costs ~320 ms. So the stream decodes
incrementally (models/embedded/agreement.py): while the user speaks, every `segment_ms` a pass decodes the audio
after the last cut with the committed words as its prompt (a prompt before the start-of-transcript token is read
in one batched step, unlike a forced prefix), words two passes agree on are committed and their audio cut off.
The final pass at the pause decodes only the tail that is not yet agreed: a second or two, ~100 ms.

faster-whisper always pads the encoder input to Whisper's 30 s window (~0.45 s on two cores); CTranslate2 accepts
a shorter one, so this stage calls it directly with a window of `window_s` (or the audio plus a second of
silence, if longer). A short window can make the decoder loop ("Set a timer. Set a timer. Set a…"): a pass whose
output repeats its own tail, or runs out of its length budget, is re-encoded with 3 s of silence after the speech
(the encoder is the cheap part; the loop comes from the model not seeing the speech end) and decoded again; if
that still loops, decoded once more from the same encoding with a repetition penalty. Nothing re-reads a 30 s
window on the critical path (that retry used to cost ~0.8 s on two cores).

A partial pass can be abandoned between its steps (encode, decode, align) when a final pass needs the thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer

from models.core_gate import FINAL_PASS, LIVE_TRANSCRIPT, CoreGate, turn
from models.embedded.agreement import LocalAgreement, Word, normalize, repeated
from models.interfaces import PassStopped, UserInput

RATE = 16000
HOP = 160  # samples per mel frame
MAX_WINDOW_S = 30  # Whisper's training window: positions beyond it do not exist
TRAILING_SILENCE_S = 1.0
RETRY_SILENCE_S = 3.0  # a looping pass is re-encoded with this much silence after the speech
NO_SPEECH_THRESHOLD = 0.6
TOKENS_PER_SECOND = 8  # length budget: fast English speech is ~4 tokens/s
LOOP_TAIL = 4  # a tail of this many tokens already seen earlier in the same output = a decoder loop
REPETITION_PENALTY = 1.3
STABLE_MARGIN_S = 0.5  # words ending this close to the live edge are never committed: their timing is unsure
PROMPT_TOKENS = 100  # committed tokens given back as the prompt (Whisper allows 223)


class PassAbandoned(PassStopped):
    """A pass stopped between its steps: a partial pass gave the thread up, or a final pass is not wanted."""


@dataclass(frozen=True)
class Decoded:
    ids: list[int]
    words: list[Word]  # only when asked for; times in samples of the decoded audio
    no_speech: float
    retries: int  # loop retries: 1 = re-encoded with more silence, 2 = and decoded again with a penalty


class WhisperTokenizer:
    def __init__(self, model_dir: Path, segment_ms: int, threads: int, language: str, window_s: float = 5.0,
                 incremental: bool = True, gate: CoreGate | None = None) -> None:
        self.segment_ms = segment_ms
        self.language = language or None
        self.incremental = incremental
        self.window_frames = int(min(MAX_WINDOW_S, max(1.0, window_s)) * RATE / HOP)
        self._whisper = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads)
        self._model: ctranslate2.models.Whisper = self._whisper.model
        # One CTranslate2 model, many sessions: passes are serialised so two turns do not halve each other's speed.
        self._lock = threading.Lock()
        self._gate = gate

    def open_stream(self) -> WhisperStream:
        return WhisperStream(self)

    def normalize(self, text: str) -> str:
        return normalize(text)

    def decode(self, audio: np.ndarray, prompt: list[int], words: bool = False,
               abandon: Callable[[], bool] | None = None, final: bool = False) -> Decoded:
        """Decode `audio` (16 kHz) after `prompt` (text tokens said before it); `abandon` is asked between steps.

        `final`: someone waits for these words (the caller stopped speaking): first in line for the cores."""
        if audio.size < RATE // 10:  # under 0.1 s: nothing Whisper can read, and it would invent something
            return Decoded([], [], 1.0, 0)
        audio = audio[: (MAX_WINDOW_S - 1) * RATE]
        budget = 12 + int(audio.size / RATE * TOKENS_PER_SECOND)

        def check() -> None:
            if abandon is not None and abandon():
                raise PassAbandoned

        # A final pass takes the cores once for all its steps; a partial pass takes them step by step, so an LM
        # token or a final pass can go between its steps (models/core_gate.py).
        @contextlib.contextmanager
        def step() -> Iterator[None]:
            if final:
                yield
                return
            with turn(self._gate, LIVE_TRANSCRIPT):
                check()  # abandoned while it waited for the cores: give them straight back
                yield

        with self._lock, turn(self._gate, FINAL_PASS) if final else contextlib.nullcontext():
            check()
            frames = self._frames(audio, TRAILING_SILENCE_S)
            with step():
                features = self._encode(audio, frames)
                tokenizer = self._tokenizer(features)
            start = [tokenizer.sot_prev, *prompt[-PROMPT_TOKENS:]] if prompt else []
            start += [*tokenizer.sot_sequence, tokenizer.no_timestamps]
            check()
            with step():
                ids, no_speech = self._generate(features, start, budget, 1.0)
            retries = 0
            if self._looping(ids, budget) and frames < MAX_WINDOW_S * RATE // HOP:
                # A loop comes from too little silence after the speech for the model to see it end: give it
                # more (the encoder is the cheap part), not the whole 30 s window.
                retries = 1
                check()
                frames = self._frames(audio, RETRY_SILENCE_S)
                with step():
                    features = self._encode(audio, frames)
                    ids, no_speech = self._generate(features, start, budget, 1.0)
                if self._looping(ids, budget):
                    retries = 2  # the same encoding, a decoder that may not repeat itself
                    with step():
                        ids, no_speech = self._generate(features, start, budget, REPETITION_PENALTY)
            aligned: list[Word] = []
            if words and ids and no_speech <= NO_SPEECH_THRESHOLD:
                check()
                with step():
                    aligned = self._align(tokenizer, features, ids, frames)
        return Decoded(ids, aligned, no_speech, retries)

    def text_of(self, decoded: Decoded) -> str:
        return self._text(decoded)

    # --- internals -------------------------------------------------------------------------------------------

    def _text(self, decoded: Decoded) -> str:
        if decoded.no_speech > NO_SPEECH_THRESHOLD:
            return ""  # Whisper's own verdict: noise, a cough, a click — not words
        return str(self._whisper.hf_tokenizer.decode(decoded.ids)).strip()

    def _frames(self, audio: np.ndarray, silence_s: float) -> int:
        frames = max(self.window_frames, int((audio.size / RATE + silence_s) * RATE / HOP))
        return int(min(MAX_WINDOW_S * RATE // HOP, -(-frames // 100) * 100))

    def _encode(self, audio: np.ndarray, frames: int) -> ctranslate2.StorageView:
        padded = np.zeros(frames * HOP, np.float32)
        padded[: audio.size] = audio
        mel = self._whisper.feature_extractor(padded)[:, :frames]
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None], dtype=np.float32))
        # Encoded once: a retry or the aligner reuses it instead of running the encoder again.
        return self._model.encode(features, to_cpu=True)

    def _tokenizer(self, encoded: ctranslate2.StorageView) -> Tokenizer:
        language = self.language or self._detect(encoded)
        return Tokenizer(self._whisper.hf_tokenizer, self._model.is_multilingual, task="transcribe",
                         language=language)

    def _generate(self, encoded: ctranslate2.StorageView, start: list[int], budget: int,
                  penalty: float) -> tuple[list[int], float]:
        result = self._model.generate(
            encoded, [start], beam_size=1, max_length=budget, suppress_blank=True, suppress_tokens=[-1],
            return_no_speech_prob=True, repetition_penalty=penalty,
        )[0]
        return list(result.sequences_ids[0]), float(result.no_speech_prob)

    @staticmethod
    def _looping(ids: list[int], budget: int) -> bool:
        return len(ids) >= budget or looped(ids)

    def _align(self, tokenizer: Tokenizer, encoded: ctranslate2.StorageView, ids: list[int],
               frames: int) -> list[Word]:
        found = self._whisper.find_alignment(tokenizer, [ids], encoded, frames)[0]
        return [Word(w["word"], tuple(w["tokens"]), int(w["start"] * RATE), int(w["end"] * RATE)) for w in found]

    def _detect(self, encoded: ctranslate2.StorageView) -> str:
        scores = self._model.detect_language(encoded)[0]
        return str(scores[0][0]).strip("<|>")


def looped(ids: list[int]) -> bool:
    """The output's last tokens already occurred earlier in it: the decoder went round again."""
    if len(ids) < 2 * LOOP_TAIL:
        return False
    tail = ids[-LOOP_TAIL:]
    return any(ids[i : i + LOOP_TAIL] == tail for i in range(len(ids) - 2 * LOOP_TAIL + 1))


class WhisperStream:
    """One session's turn: the words agreed so far, and where the audio still to decode begins."""

    def __init__(self, model: WhisperTokenizer) -> None:
        self._model = model
        self._agreement = LocalAgreement()
        self._abandon = False

    def reset(self) -> None:
        self._agreement.reset()
        self._abandon = False

    def abandon(self) -> None:
        """Called from another thread: the partial pass in flight stops at its next step."""
        self._abandon = True

    def push_segment(self, turn_audio: np.ndarray) -> str:
        # The flag is cleared when a pass ends, not when it starts: an abandon() that races with the start of a
        # pass still stops it (the final pass never waits), at worst costing the next partial pass instead.
        try:
            return self._push(turn_audio)
        except PassAbandoned:
            return ""  # nothing new to show; the final pass that took the thread has the words
        finally:
            self._abandon = False

    def _push(self, turn_audio: np.ndarray) -> str:
        if not self._model.incremental:
            return self._model.text_of(self._model.decode(turn_audio, [], abandon=lambda: self._abandon))
        agreement = self._agreement
        cut = agreement.cut
        decoded = self._model.decode(turn_audio[cut:], agreement.prompt_tokens(), words=True,
                                     abandon=lambda: self._abandon)
        if decoded.no_speech > NO_SPEECH_THRESHOLD:
            return agreement.text([])
        words = [dataclasses.replace(w, start=w.start + cut, end=w.end + cut) for w in decoded.words]
        agreement.update(words, turn_audio, int(STABLE_MARGIN_S * RATE))
        return agreement.text(agreement.pending)

    def finalize(self, turn_audio: np.ndarray, stop: Callable[[], bool] | None = None) -> UserInput:
        started = time.perf_counter()
        if self._model.incremental:
            agreement = self._agreement
            cut = min(agreement.cut, turn_audio.size)
            decoded = self._model.decode(turn_audio[cut:], agreement.prompt_tokens(), abandon=stop, final=True)
            tail = self._model.text_of(decoded).split()
            # The tail's first words may read the committed words' last ones back (the prompt's echo).
            tail = tail[repeated(agreement.committed_keys(), [normalize(w) for w in tail]) :]
            text = " ".join(p for p in (agreement.text([]), " ".join(tail)) if p)
        else:
            cut = 0
            decoded = self._model.decode(turn_audio, [], abandon=stop, final=True)
            text = self._model.text_of(decoded)
        timing = {"decoded_audio_ms": round((turn_audio.size - cut) * 1000 / RATE, 1),
                  "turn_audio_ms": round(turn_audio.size * 1000 / RATE, 1),
                  "work_ms": round((time.perf_counter() - started) * 1000, 1),
                  "loop_retries": decoded.retries}
        return UserInput(text=text, content=text, key=normalize(text), timing=timing)
