"""hibari-tts: a 24 kHz English voice distilled from Kokoro, ~100x real time on one core."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
from hibari import SAMPLE_RATE, Hibari

from models.interfaces import VoiceSettings

OFFLINE_VOICES = ("heart",)  # hibari downloads its other voices on first use; hubs are unreachable here


class HibariTTS:
    sample_rate = SAMPLE_RATE

    def __init__(self, threads: int) -> None:
        self._tts = Hibari(voice="heart", threads=threads)
        self._lock = threading.Lock()

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
            with self._lock:
                audio = self._tts(sentence, speed=speed)
            if audio.size:
                yield audio.astype(np.float32, copy=False)
