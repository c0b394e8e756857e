"""Semantic tokens: the CosyVoice v1 speech tokenizer (ONNX) on Whisper-style 128-bin log-mel, 25 Hz, 4096 codes.

The ONNX model takes `[1, 128, T]` float32 features and `[1]` int32 length and returns ids at T / 4. It attends
over its whole input, so it cannot stream by itself: the release runs it once per utterance (30 s at most). Here
a turn is cut into fixed windows (`semantic_window_ms`, multiples of 240 ms from the turn's start); each window is
tokenised once, with up to `semantic_context_ms` of the audio before it as context, and only its own tokens are
kept. A window's tokens are final as soon as the window is complete, which is what lets the tokenizer stage emit
groups while the user speaks; a window of 30 s or more reproduces the release's single pass.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.step_audio.mel import whisper_log_mel

SAMPLES_PER_TOKEN = 640  # 40 ms at 16 kHz: 4 mel frames of 160 samples
MIN_TAIL_SAMPLES = 480  # the release drops pieces shorter than this


def onnx_session(path: Path, device: str, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), opts, providers=providers)


class SemanticModel:
    def __init__(self, onnx_file: Path, device: str, window_ms: int, context_ms: int) -> None:
        if window_ms <= 0 or window_ms % 240 or context_ms < 0 or context_ms % 40:
            raise ValueError("semantic_window_ms must be a positive multiple of 240, semantic_context_ms of 40")
        self.session = onnx_session(onnx_file, device)
        inputs = self.session.get_inputs()
        if len(inputs) != 2:
            raise ValueError(f"{onnx_file}: expected inputs (feats, feats_length), got {[i.name for i in inputs]}")
        self._feats_name, self._len_name = inputs[0].name, inputs[1].name
        self.window = window_ms * 16
        self.context = context_ms * 16
        self.lock = threading.Lock()

    def run(self, audio: np.ndarray) -> list[int]:
        feats = whisper_log_mel(audio)[None]
        length = np.array([feats.shape[2]], dtype=np.int32)
        with self.lock:
            out = self.session.run(None, {self._feats_name: feats, self._len_name: length})[0]
        return [int(x) for x in np.asarray(out).reshape(-1)]

    def window_tokens(self, audio: np.ndarray, start: int, end: int) -> list[int]:
        """Tokens of audio[start:end], computed with up to `context` samples before it."""
        if end - start < MIN_TAIL_SAMPLES:
            return []
        left = max(0, start - self.context)
        tokens = self.run(audio[left:end])
        skip = (start - left) // SAMPLES_PER_TOKEN
        want = -(-(end - start) // SAMPLES_PER_TOKEN)
        return tokens[skip : skip + want]


class SemanticStream:
    def __init__(self, model: SemanticModel) -> None:
        self.model = model
        self.reset()

    def reset(self) -> None:
        self._windows: list[list[int]] = []

    @property
    def codes(self) -> list[int]:
        return [c for w in self._windows for c in w]

    def push(self, audio: np.ndarray) -> None:
        w = self.model.window
        while (len(self._windows) + 1) * w <= audio.size:
            k = len(self._windows)
            self._windows.append(self.model.window_tokens(audio, k * w, (k + 1) * w))

    def finalize(self, audio: np.ndarray) -> list[int]:
        w = self.model.window
        complete = audio.size // w
        codes = [c for win in self._windows[:complete] for c in win]
        for k in range(min(complete, len(self._windows)), complete):
            codes.extend(self.model.window_tokens(audio, k * w, (k + 1) * w))
        if audio.size > complete * w:
            codes.extend(self.model.window_tokens(audio, complete * w, audio.size))
        return codes
