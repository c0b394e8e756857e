"""Linguistic tokens: Paraformer encoder frames (16.7 Hz) quantised to the nearest of 1024 k-means centroids.

Front end: Kaldi fbank of the waveform scaled to int16 range, LFR 7/6, CMVN from `am.mvn`. The stream keeps the
turn's fbank frames and runs one encoder chunk (4 LFR frames, 240 ms) as soon as its frames exist without end
padding. `finalize` adds the end-padded tail on a copy of the state, so a draft's finalize never disturbs the
stream should the user go on speaking. States after recent chunks are kept so a finalize on a slightly shorter
turn (the VAD's end of speech is often before the last segment pushed) restarts from the right chunk.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.step_audio import fbank
from models.step_audio.paraformer import EncoderState, SanmEncoder, config_from_yaml

INT16_SCALE = 32768.0
SNAPSHOTS = 16  # ~4 s of chunks: how far back a finalize may cut without a full recompute


class LinguisticModel:
    """The shared, stateless part: encoder, CMVN and centroids on one device."""

    def __init__(self, encoder: SanmEncoder, shift: np.ndarray, scale: np.ndarray, centroids: np.ndarray,
                 device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.encoder = encoder.to(device=device, dtype=dtype).eval()
        self.device = torch.device(device)
        self.dtype = dtype
        self.shift = shift.astype(np.float32)
        self.scale = scale.astype(np.float32)
        # Distances are computed in float32 whatever the encoder runs in: argmin must not flip on rounding.
        self.centroids = torch.from_numpy(centroids.astype(np.float32)).to(self.device)
        self.chunk_frames = encoder.cfg.chunk_size[1]
        self.lock = threading.Lock()

    @classmethod
    def load(cls, paraformer_dir: Path, centroids_file: Path, device: str, dtype: torch.dtype) -> LinguisticModel:
        import yaml

        conf = yaml.safe_load((paraformer_dir / "config.yaml").read_text())
        cfg = config_from_yaml(conf)
        encoder = SanmEncoder(cfg)
        state = torch.load(paraformer_dir / "model.pt", map_location="cpu", weights_only=True)
        state = unwrap_state_dict(state)
        enc_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        missing, unexpected = encoder.load_state_dict(enc_state, strict=False)
        if missing:
            raise ValueError(f"{paraformer_dir}/model.pt lacks encoder tensors: {missing[:5]} ...")
        if unexpected:
            raise ValueError(f"{paraformer_dir}/model.pt has encoder tensors this encoder does not: {unexpected[:5]}")
        shift, scale = fbank.load_am_mvn(paraformer_dir / "am.mvn")
        centroids = np.load(centroids_file)
        if centroids.shape[1] != cfg.output_size:
            raise ValueError(f"{centroids_file}: centroids are {centroids.shape}, "
                             f"the encoder outputs {cfg.output_size}")
        return cls(encoder, shift, scale, centroids, device, dtype)

    def initial_state(self) -> EncoderState:
        return self.encoder.initial_state(self.device, self.dtype)

    def encode(self, lfr_frames: np.ndarray, state: EncoderState) -> tuple[list[int], EncoderState]:
        feats = (lfr_frames + self.shift) * self.scale
        x = torch.from_numpy(feats[None]).to(self.device, self.dtype)
        with self.lock:
            out, state = self.encoder.chunk(x, state)
        dists = torch.cdist(out[0].float(), self.centroids)
        return [int(i) for i in dists.argmin(dim=1).tolist()], state


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """funasr checkpoints are a bare state dict or one wrapped under 'state_dict' / 'model'."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError("not a state dict")
    return obj


@dataclass(frozen=True)
class _Snapshot:
    chunks: int
    state: EncoderState


class LinguisticStream:
    def __init__(self, model: LinguisticModel) -> None:
        self.model = model
        self.reset()

    def reset(self) -> None:
        self._feats = np.zeros((0, 80), np.float32)
        self._codes: list[int] = []
        self._chunks = 0
        self._state = self.model.initial_state()
        self._snapshots: deque[_Snapshot] = deque([_Snapshot(0, self._state)], maxlen=SNAPSHOTS)

    @property
    def codes(self) -> list[int]:
        """Codes of the chunks complete so far (final: later audio never changes them)."""
        return list(self._codes)

    def _extend_feats(self, audio: np.ndarray) -> int:
        total = fbank.frame_count(audio.size)
        have = self._feats.shape[0]
        if total > have:
            new = fbank.fbank(audio * INT16_SCALE, first=have)
            self._feats = np.concatenate([self._feats, new])
        return total

    def push(self, audio: np.ndarray) -> None:
        """Run every chunk whose frames the turn so far holds without end padding."""
        frames = self._extend_feats(audio)
        ready = fbank.lfr_count(frames, final=False) // self.model.chunk_frames
        while self._chunks < ready:
            first = self._chunks * self.model.chunk_frames
            lfr = fbank.lfr(self._feats[:frames], first, first + self.model.chunk_frames)
            codes, self._state = self.model.encode(lfr, self._state)
            self._codes.extend(codes)
            self._chunks += 1
            self._snapshots.append(_Snapshot(self._chunks, self._state))

    def finalize(self, audio: np.ndarray) -> list[int]:
        """All codes of `audio` (a prefix of the turn pushed so far, or longer), end padding included."""
        frames = self._extend_feats(audio)
        feats = self._feats[:frames]
        total = fbank.lfr_count(frames, final=True)
        # Chunks done by push() stay valid while their frames need no end padding in this (maybe shorter) audio.
        valid = min(self._chunks, fbank.lfr_count(frames, final=False) // self.model.chunk_frames)
        start = next((s for s in reversed(self._snapshots) if s.chunks <= valid), None)
        if start is None:
            start = _Snapshot(0, self.model.initial_state())
        size = self.model.chunk_frames
        codes = self._codes[: start.chunks * size]
        state = start.state
        for first in range(start.chunks * size, total, size):
            last = min(total, first + size)
            chunk_codes, state = self.model.encode(fbank.lfr(feats, first, last), state)
            codes.extend(chunk_codes)
        return codes
