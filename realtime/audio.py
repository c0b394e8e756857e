"""PCM helpers: PyAV resampling, format conversion and energy, shared by every transport."""

from __future__ import annotations

import av
import av.filter
import numpy as np

ENGINE_RATE = 16000  # what the VAD and tokenizer consume: mono float32 at 16 kHz


class Resampler:
    """Streaming mono resampler (PyAV/libswresample keeps the filter state between calls)."""

    def __init__(self, in_rate: int, out_rate: int, in_layout: str = "mono") -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._layout = in_layout
        self._passthrough = in_rate == out_rate and in_layout == "mono"
        self._graph: av.filter.Graph | None = None
        self._pts = 0

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Float32 (or int16) mono samples in, float32 mono out."""
        if samples.dtype == np.int16:
            samples = samples.astype(np.float32) / 32768.0
        if self._passthrough or samples.size == 0:
            return samples.astype(np.float32, copy=False)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.float32)[None, :], format="flt",
                                           layout="mono")
        return self.process_frame(frame)

    def process_frame(self, frame: av.AudioFrame) -> np.ndarray:
        """Any PyAV audio frame (e.g. aiortc's s16 stereo 48 kHz) in, float32 mono at out_rate out."""
        frame.sample_rate = frame.sample_rate or self.in_rate
        frame.pts = self._pts
        self._pts += frame.samples
        if self._graph is None:
            self._graph = self._build(frame)
        self._graph.push(frame)
        out = []
        while True:
            try:
                out.append(self._graph.pull())
            except (EOFError, av.error.BlockingIOError):
                break
        if not out:
            return np.zeros(0, np.float32)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in out]).astype(np.float32, copy=False)

    def _build(self, frame: av.AudioFrame) -> av.filter.Graph:
        """The filter chain av.AudioResampler builds, on one thread: FFmpeg gives every graph a pool of one thread
        per core by default, two idle threads per resampler here, which piled up by the hundred under load (one
        resampler per call and per reply) and took their stacks and malloc arenas with them."""
        graph = av.filter.Graph()
        graph.threads = 1
        source = graph.add("abuffer", sample_rate=str(frame.sample_rate), sample_fmt=frame.format.name,
                           channel_layout=frame.layout.name, time_base=f"1/{frame.sample_rate}")
        convert = graph.add("aformat", sample_rates=str(self.out_rate), sample_fmts="flt", channel_layouts="mono")
        sink = graph.add("abuffersink")
        source.link_to(convert)
        convert.link_to(sink)
        graph.configure()
        return graph


def resample(audio: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """A whole clip at another rate, flushed so its tail is not left in the filter, same duration."""
    if in_rate == out_rate:
        return audio.astype(np.float32)
    r = Resampler(in_rate, out_rate)
    out = np.concatenate([r.process(audio.astype(np.float32)), r.process(np.zeros(in_rate // 10, np.float32))])
    return out[: round(audio.size * out_rate / in_rate)]


def to_int16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


def rms_dbfs(samples: np.ndarray) -> float:
    if samples.size == 0:
        return -120.0
    x = samples.astype(np.float32) / (32768.0 if samples.dtype == np.int16 else 1.0)
    rms = float(np.sqrt(np.mean(x * x)))
    return 20.0 * np.log10(max(rms, 1e-6))


class AudioRing:
    """The last `capacity` samples of a stream, addressed by absolute sample index (no copy per append)."""

    def __init__(self, capacity: int) -> None:
        self._buf = np.zeros(capacity, np.float32)
        self.capacity = capacity
        self.end = 0  # absolute index one past the newest sample

    @property
    def start(self) -> int:
        return max(0, self.end - self.capacity)

    def append(self, samples: np.ndarray) -> None:
        n = samples.size
        if n > self.capacity:
            self.end += n - self.capacity
            samples, n = samples[-self.capacity :], self.capacity
        pos = self.end % self.capacity
        first = min(n, self.capacity - pos)
        self._buf[pos : pos + first] = samples[:first]
        self._buf[: n - first] = samples[first:]
        self.end += n

    def slice(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end) clipped to what is still held; always a copy."""
        start, end = max(start, self.start), min(end, self.end)
        if end <= start:
            return np.zeros(0, np.float32)
        a, b = start % self.capacity, end % self.capacity
        if a < b:
            return self._buf[a : a + (end - start)].copy()
        return np.concatenate([self._buf[a:], self._buf[:b]])
