"""Mel spectrograms in the two non-Kaldi flavours the release uses, re-derived in numpy.

- Whisper-style 128-bin log-mel at 16 kHz (n_fft 400, hop 160, periodic Hann, centred with reflect padding, last
  frame dropped, log10 floored at 1e-10, clamped to 8 below the maximum, then (x + 4) / 4): the input of the
  CosyVoice v1 speech tokenizer ONNX.
- Matcha/HiFi-GAN 80-bin mel at 22.05 kHz (n_fft 1024, hop 256, fmin 0, fmax 8000, reflect padding of 384 and no
  centring, magnitude, natural log floored at 1e-5): the flow decoder's prompt features.

Both use Slaney-scale, Slaney-normalised filters (librosa's defaults).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    linear = f / (200.0 / 3)
    log_region = 1000.0
    logstep = math.log(6.4) / 27.0
    return np.where(f >= log_region, 15.0 + np.log(np.maximum(f, 1e-10) / log_region) / logstep, linear)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    logstep = math.log(6.4) / 27.0
    return np.where(m >= 15.0, 1000.0 * np.exp(logstep * (m - 15.0)), m * (200.0 / 3))


@cache
def slaney_filters(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = _mel_to_hz(np.linspace(_hz_to_mel(np.array(fmin)), _hz_to_mel(np.array(fmax)), n_mels + 2))
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    weights = np.zeros((n_mels, fft_freqs.size))
    for i in range(n_mels):
        lower = -ramps[i] / widths[i]
        upper = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_points[2 : n_mels + 2] - mel_points[:n_mels]))[:, None]
    return weights.astype(np.float32)


def _periodic_hann(n: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2 * math.pi * np.arange(n) / n)


def _power_frames(samples: np.ndarray, n_fft: int, hop: int, pad: int, drop_last: bool) -> np.ndarray:
    x = np.pad(samples.astype(np.float64), (pad, pad), mode="reflect") if pad else samples.astype(np.float64)
    count = 1 + (x.size - n_fft) // hop if x.size >= n_fft else 0
    if drop_last and count:
        count -= 1
    if count <= 0:
        return np.zeros((0, n_fft // 2 + 1))
    idx = np.arange(count)[:, None] * hop + np.arange(n_fft)[None, :]
    return np.abs(np.fft.rfft(x[idx] * _periodic_hann(n_fft), axis=1)) ** 2


def whisper_log_mel(samples: np.ndarray, n_mels: int = 128) -> np.ndarray:
    """[n_mels, len // 160] float32 from 16 kHz float audio."""
    power = _power_frames(samples, 400, 160, 200, drop_last=True)
    mel = slaney_filters(16000, 400, n_mels) @ power.T
    log_spec = np.log10(np.maximum(mel, 1e-10))
    if log_spec.size:
        log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def matcha_mel(samples: np.ndarray, sample_rate: int = 22050, n_mels: int = 80) -> np.ndarray:
    """[n_mels, frames] float32 log-mel of 22.05 kHz audio, as CosyVoice's flow expects its prompt."""
    n_fft, hop = 1024, 256
    power = _power_frames(samples, n_fft, hop, (n_fft - hop) // 2, drop_last=False)
    magnitude = np.sqrt(power + 1e-9)
    mel = slaney_filters(sample_rate, n_fft, n_mels, 0.0, 8000.0) @ magnitude.T
    return np.log(np.maximum(mel, 1e-5)).astype(np.float32)
