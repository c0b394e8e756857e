"""Kaldi-compatible log-mel filterbanks, low-frame-rate stacking and CMVN: the Paraformer front end (and CAM++'s).

Computed in numpy, frame by frame, with Kaldi's definitions (snip_edges: frame i covers samples 160*i to
160*i + 400; DC removal, pre-emphasis 0.97, window, 512-point power spectrum, triangular mel banks from 20 Hz to
Nyquist on the 1127*ln(1 + f/700) scale, natural log floored at float32 epsilon). Each frame depends only on its
own 400 samples, which is what lets the tokenizer compute the frames of a growing turn incrementally and get
exactly the offline result. torchaudio.compliance.kaldi is the usual implementation; torchaudio does not install
on the CPU machines this is developed on, so this module re-derives it.
"""

from __future__ import annotations

import math
import re
from functools import cache
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
FRAME_LENGTH = 400  # 25 ms
FRAME_SHIFT = 160  # 10 ms
PADDED = 512
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
EPS = float(np.finfo(np.float32).eps)


def frame_count(samples: int) -> int:
    return 0 if samples < FRAME_LENGTH else 1 + (samples - FRAME_LENGTH) // FRAME_SHIFT


def _mel(f: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


@cache
def mel_banks(num_bins: int = 80) -> np.ndarray:
    """[num_bins, PADDED // 2 + 1]; the Nyquist column is zero, as in Kaldi."""
    n_fft_bins = PADDED // 2
    mel_low, mel_high = _mel(LOW_FREQ), _mel(SAMPLE_RATE / 2)
    delta = (mel_high - mel_low) / (num_bins + 1)
    mels = _mel(np.arange(n_fft_bins) * SAMPLE_RATE / PADDED)
    banks = np.zeros((num_bins, n_fft_bins + 1))
    for b in range(num_bins):
        left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
        up = (mels - left) / (center - left)
        down = (right - mels) / (right - center)
        weights = np.where(mels <= center, up, down)
        banks[b, :n_fft_bins] = np.where((mels > left) & (mels < right), weights, 0.0)
    return banks


@cache
def window(kind: str) -> np.ndarray:
    n = np.arange(FRAME_LENGTH)
    if kind == "hamming":
        return 0.54 - 0.46 * np.cos(2 * math.pi * n / (FRAME_LENGTH - 1))
    if kind == "povey":
        return (0.5 - 0.5 * np.cos(2 * math.pi * n / (FRAME_LENGTH - 1))) ** 0.85
    raise ValueError(f"unknown window {kind!r}")


def fbank(samples: np.ndarray, num_bins: int = 80, window_kind: str = "hamming", first: int = 0,
          last: int | None = None) -> np.ndarray:
    """Log mel energies of frames first..last-1 (all complete frames by default), float32 [frames, num_bins].

    `samples` is the waveform at 16 kHz in whatever scale the model expects (Paraformer: int16 range).
    """
    total = frame_count(samples.size)
    last = total if last is None else min(last, total)
    if last <= first:
        return np.zeros((0, num_bins), np.float32)
    starts = np.arange(first, last) * FRAME_SHIFT
    frames = samples.astype(np.float64)[starts[:, None] + np.arange(FRAME_LENGTH)[None, :]]
    frames = frames - frames.mean(axis=1, keepdims=True)
    shifted = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames - PREEMPHASIS * shifted
    frames = frames * window(window_kind)
    spectrum = np.abs(np.fft.rfft(frames, n=PADDED)) ** 2
    energies = spectrum @ mel_banks(num_bins).T
    return np.log(np.maximum(energies, EPS)).astype(np.float32)


# --- low frame rate: 7 frames stacked every 6, the first frame repeated 3 times as left padding ---------------

LFR_M = 7
LFR_N = 6
LFR_LEFT = (LFR_M - 1) // 2


def lfr_count(frames: int, final: bool) -> int:
    """LFR frames computable from `frames` fbank frames; only `final` may pad the end with the last frame."""
    if frames == 0:
        return 0
    if final:
        return math.ceil(frames / LFR_N)
    # Frame j needs padded rows 6j..6j+6, i.e. fbank frames up to 6j + 3.
    return max(0, (frames - (LFR_M - LFR_LEFT)) // LFR_N + 1)


def lfr(feats: np.ndarray, first: int, last: int) -> np.ndarray:
    """Stacked frames first..last-1 of fbank `feats` [T, D] -> [last - first, 7 * D]."""
    t, d = feats.shape
    out = np.empty((max(0, last - first), LFR_M * d), np.float32)
    for row, j in enumerate(range(first, last)):
        idx = np.arange(j * LFR_N, j * LFR_N + LFR_M) - LFR_LEFT
        idx = np.clip(idx, 0, t - 1)  # left pad repeats frame 0, the final frame repeats the last one
        out[row] = feats[idx].reshape(-1)
    return out


# --- CMVN from a Kaldi nnet text file (am.mvn): <AddShift> then <Rescale> ---------------------------------------


def load_am_mvn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    text = path.read_text()
    vectors = {}
    for name in ("AddShift", "Rescale"):
        m = re.search(rf"<{name}>[^\[]*\[([^\]]*)\]", text)
        if m is None:
            raise ValueError(f"{path}: no <{name}> block")
        vectors[name] = np.array(m.group(1).split(), dtype=np.float32)
    return vectors["AddShift"], vectors["Rescale"]


def write_am_mvn(path: Path, shift: np.ndarray, scale: np.ndarray) -> None:
    """The same layout funasr ships (used to build synthetic test folders)."""
    dim = shift.size

    def vec(v: np.ndarray) -> str:
        return " ".join(f"{x:.6f}" for x in v)

    path.write_text(
        f"<Nnet>\n<Splice> {dim} {dim}\n[ 0 ]\n<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {vec(shift)} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {vec(scale)} ]\n</Nnet>\n"
    )
