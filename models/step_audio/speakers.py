"""Prompt speakers: the release's registered voices (`speakers/`) and voice-cloning samples.

A speakers folder is laid out as in the release: `speakers_info.json` maps a speaker id to its sample's
transcript, and `<id>_prompt.wav` is the sample; `<id>RAP` and `<id>哼唱` are the same voice's prompts for the
music decoder. A cloning sample is trimmed of silence, peak-normalised and used at 16 kHz mono.
"""

from __future__ import annotations

import hashlib
import json
import threading
import wave
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from models.step_audio.decoder import CosyVoiceDecoder, SpeakerPrompt
from realtime.audio import resample

Tokenize = Callable[[np.ndarray], list[int]]


def read_wav(path: Path) -> np.ndarray:
    """A 16-bit PCM WAV as float32 mono at 16 kHz."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: need 16-bit PCM")
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0
        if w.getnchannels() > 1:
            pcm = pcm.reshape(-1, w.getnchannels()).mean(axis=1)
        rate = w.getframerate()
    return resample(pcm, rate, 16000)


def write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())


def clean_sample(audio: np.ndarray, dbfs: float = -40.0, margin_ms: int = 50) -> np.ndarray:
    """Trim leading/trailing silence (10 ms frames below `dbfs`) and peak-normalise to 0.9."""
    frame = 160
    n = audio.size // frame
    if n == 0:
        return audio.astype(np.float32)
    rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    loud = np.nonzero(20 * np.log10(rms) > dbfs)[0]
    if loud.size:
        margin = margin_ms * 16
        audio = audio[max(0, loud[0] * frame - margin) : min(audio.size, (loud[-1] + 1) * frame + margin)]
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    return (audio * (0.9 / peak) if peak > 0 else audio).astype(np.float32)


class Speakers:
    """Registered voices, prepared on first use; clones cached by sample and transcript."""

    def __init__(self, folder: Path | None, tokenize: Tokenize) -> None:
        self.folder = folder
        self.tokenize = tokenize
        self.info: dict[str, str] = {}
        if folder is not None and (folder / "speakers_info.json").is_file():
            self.info = json.loads((folder / "speakers_info.json").read_text(encoding="utf-8"))
        self._prepared: dict[tuple[str, str], SpeakerPrompt] = {}
        self._clones: OrderedDict[str, SpeakerPrompt] = OrderedDict()
        self._lock = threading.Lock()

    def has(self, speaker: str) -> bool:
        return speaker in self.info

    def registered(self, speaker: str, decoder: CosyVoiceDecoder) -> SpeakerPrompt:
        key = (speaker, decoder.name)
        with self._lock:
            if key not in self._prepared:
                if self.folder is None or speaker not in self.info:
                    raise KeyError(f"no prompt speaker {speaker!r} (speakers: {', '.join(self.info) or 'none'})")
                audio = clean_sample(read_wav(self.folder / f"{speaker}_prompt.wav"))
                self._prepared[key] = decoder.prompt(speaker, self.info[speaker], audio, self.tokenize(audio))
            return self._prepared[key]

    def clone(self, audio16k: np.ndarray, text: str, decoder: CosyVoiceDecoder) -> SpeakerPrompt:
        digest = hashlib.sha1(audio16k.astype(np.float32).tobytes() + text.encode() + decoder.name.encode())
        key = digest.hexdigest()
        with self._lock:
            if key not in self._clones:
                audio = clean_sample(audio16k)
                self._clones[key] = decoder.prompt("", text, audio, self.tokenize(audio))
                while len(self._clones) > 16:
                    self._clones.popitem(last=False)
            self._clones.move_to_end(key)
            return self._clones[key]
