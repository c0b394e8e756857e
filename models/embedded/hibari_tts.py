"""hibari-tts: a 24 kHz English voice distilled from Kokoro, ~100x real time on one core."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
from hibari import SAMPLE_RATE, Hibari

from models.core_gate import SPEECH, CoreGate, turn
from models.interfaces import VoiceSettings

OFFLINE_VOICES = ("heart",)  # hibari downloads its other voices on first use; hubs are unreachable here
# hibari pads each sentence with 200-320 ms of silence in front and 300-500 ms behind (measured). In a
# conversation the front pad delays every reply's first word and the two together leave ~0.75 s of dead air
# between sentences, so each sentence is trimmed to a short lead-in and a natural pause.
LEAD_MS = 20
TAIL_MS = 150
SILENCE_DBFS = -45.0


def trim_silence(audio: np.ndarray, rate: int, lead_ms: int = LEAD_MS, tail_ms: int = TAIL_MS) -> np.ndarray:
    frame = rate // 100
    n = audio.size // frame
    if n == 0:
        return audio
    frames = audio[: n * frame].reshape(n, frame)
    levels = 20 * np.log10(np.maximum(np.sqrt(np.mean(frames * frames, axis=1)), 1e-6))
    voiced = np.nonzero(levels > SILENCE_DBFS)[0]
    if voiced.size == 0:
        return audio
    start = max(0, int(voiced[0]) * frame - rate * lead_ms // 1000)
    end = min(audio.size, (int(voiced[-1]) + 1) * frame + rate * tail_ms // 1000)
    return audio[start:end]


class HibariTTS:
    sample_rate = SAMPLE_RATE

    def __init__(self, threads: int, gate: CoreGate | None = None) -> None:
        self._tts = Hibari(voice="heart", threads=threads)
        self._lock = threading.Lock()
        self._gate = gate

    def unsupported(self, voice: VoiceSettings) -> list[str]:
        bad = [name for name in ("emotion", "dialect", "style", "clone_text") if getattr(voice, name)]
        if voice.clone_audio is not None and "clone_text" not in bad:
            bad.append("clone_audio")
        if voice.voice and voice.voice not in OFFLINE_VOICES:
            bad.append("voice")
        return bad

    def stream(self, text: str, voice: VoiceSettings) -> Iterator[np.ndarray]:
        speed = min(2.0, max(0.5, voice.speed or 1.0))
        for sentence in self._tts.split_sentences(text):
            with self._lock, turn(self._gate, SPEECH):
                audio = self._tts(sentence, speed=speed)
            audio = trim_silence(audio.astype(np.float32, copy=False), SAMPLE_RATE)
            if audio.size:
                yield audio
