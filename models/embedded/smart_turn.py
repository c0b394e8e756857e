"""Pipecat's Smart Turn v3.2 through onnxruntime: semantic end of turn from the turn's audio alone.

The model (a Whisper-tiny encoder with a classifier head, BSD-2-Clause) hears the last 8 s of the turn as 80 Whisper
log-mel bands and answers how likely it is that the speaker has finished: intonation and the words so far, not
silence. Its input is prepared as Pipecat prepares it: the last 8 s, or the whole turn zero-padded at the start to
8 s; the waveform normalised to zero mean and unit variance; Whisper's log-mel (25 ms window, 10 ms hop, the last
frame dropped, clamped to 8 decades below the peak, scaled by (x + 4) / 4). The log-mel comes from faster-whisper's
numpy extractor, which the serving environment already has; it matches transformers' WhisperFeatureExtractor to
about 2e-5 on these windows (tests/test_smart_turn.py checks it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from faster_whisper.feature_extractor import FeatureExtractor

SAMPLE_RATE = 16000
WINDOW_S = 8
WINDOW_SAMPLES = WINDOW_S * SAMPLE_RATE  # 128000 samples -> 800 feature frames
NORM_EPS = 1e-7  # added to the variance before the waveform is normalised, as transformers does


def model_window(turn_audio: np.ndarray) -> np.ndarray:
    """The samples the model hears: the turn's last 8 s, or the whole turn with zeros before it up to 8 s."""
    audio = np.asarray(turn_audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"Smart Turn needs mono 16 kHz audio, got shape {audio.shape}")
    audio = audio[-WINDOW_SAMPLES:]
    if audio.size < WINDOW_SAMPLES:
        audio = np.concatenate([np.zeros(WINDOW_SAMPLES - audio.size, np.float32), audio])
    return audio


class SmartTurn:
    """One shared session (`InferenceSession.run` is thread-safe): every call of every session goes through it."""

    def __init__(self, model_file: Path) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(model_file), opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._mel = FeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE, chunk_length=WINDOW_S)

    def features(self, turn_audio: np.ndarray) -> np.ndarray:
        """(80, 800) float32 log-mel of the model window."""
        x = model_window(turn_audio)
        x = (x - x.mean()) / np.sqrt(x.var() + NORM_EPS)
        # No extra padding: 128000 samples give 801 centred frames and the extractor drops the last one.
        mel = self._mel(x, padding=0)
        return np.asarray(mel, dtype=np.float32)

    def probability(self, turn_audio: np.ndarray) -> float:
        """How likely the turn is complete, in [0, 1]; an empty turn is not (0.0)."""
        if np.asarray(turn_audio).size == 0:
            return 0.0
        (out,) = self._session.run(None, {self._input: self.features(turn_audio)[None]})
        # The graph ends in a sigmoid: its "logits" output is already a probability.
        return float(np.clip(np.asarray(out).reshape(-1)[0], 0.0, 1.0))
