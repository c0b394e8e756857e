"""Silero VAD v6 through onnxruntime: one shared session, per-stream recurrent state."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

SAMPLE_RATE = 16000
FRAME_SAMPLES = 512  # 32 ms: the window the 16 kHz model was trained on
CONTEXT_SAMPLES = 64  # the model expects the previous window's last 64 samples prepended


class SileroVad:
    frame_samples = FRAME_SAMPLES

    def __init__(self, model_file: Path) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(model_file), opts, providers=["CPUExecutionProvider"])
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        # InferenceSession.run is thread-safe; the lock only keeps one frame at a time on this core budget.
        self._lock = threading.Lock()

    def open_stream(self) -> SileroStream:
        return SileroStream(self)

    def run(self, window: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        with self._lock:
            out, new_state = self._session.run(
                None, {"input": window[None, :], "state": state, "sr": self._sr}
            )
        return float(out[0, 0]), new_state


class SileroStream:
    def __init__(self, model: SileroVad) -> None:
        self._model = model
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, np.float32)

    def probability(self, frame: np.ndarray) -> float:
        if frame.shape != (FRAME_SAMPLES,):
            raise ValueError(f"Silero needs {FRAME_SAMPLES} samples at 16 kHz, got {frame.shape}")
        window = np.concatenate([self._context, frame.astype(np.float32, copy=False)])
        prob, self._state = self._model.run(window, self._state)
        self._context = window[-CONTEXT_SAMPLES:]
        return prob
