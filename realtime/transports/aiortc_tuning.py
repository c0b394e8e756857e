"""Two aiortc behaviours a voice server must change (aiortc is pinned to 1.16.x for these).

1. The audio receive jitter buffer waits for 4 packets before releasing the first (~80 ms, JitterBuffer
   prefetch=4). That delay exists for smooth *playout*; Parley never plays what it receives, it feeds a VAD and a
   tokenizer, which need packets in order but not evenly spaced. `InOrderBuffer` releases each packet as it
   arrives and drops duplicates and packets older than one already released (a reordered packet becomes a 20 ms
   loss, which the VAD and tokenizer tolerate). Arrival jitter therefore adds no delay at all. Set
   `[webrtc] receive_prefetch` above 0 to restore aiortc's buffer with that prefetch.
2. aiortc computes an RFC 6465 audio level for every outgoing frame in a pure-Python loop (90–175 µs a frame);
   numpy does the same sum in a few µs, which matters at 24+ sessions on 2 cores.
"""

from __future__ import annotations

import math

import aiortc.rtp
import numpy as np
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket
from av import AudioFrame


class InOrderBuffer:
    """aiortc's JitterBuffer interface, releasing every in-order audio packet immediately."""

    capacity = 16

    def __init__(self) -> None:
        self._last: int | None = None
        self.dropped = 0

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._last is not None:
            ahead = (seq - self._last) & 0xFFFF
            if ahead == 0 or ahead > 0x8000:
                self.dropped += 1
                return False, None
        self._last = seq
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)  # type: ignore[attr-defined]

    def remove(self, count: int) -> None:
        pass

    def smart_remove(self, count: int) -> bool:
        return False


def tune_receiver(receiver: RTCRtpReceiver, prefetch: int) -> None:
    """Swap the audio receiver's buffer before any packet arrives (after setRemoteDescription)."""
    if receiver.track is not None and receiver.track.kind != "audio":
        return
    buffer = InOrderBuffer() if prefetch <= 0 else JitterBuffer(capacity=16, prefetch=prefetch)
    receiver._RTCRtpReceiver__jitter_buffer = buffer  # type: ignore[attr-defined]


def audio_level_dbov(frame: AudioFrame) -> int:
    """Same contract as aiortc.rtp.compute_audio_level_dbov: -127 (silence) .. 0 dBov."""
    samples = np.frombuffer(bytes(frame.planes[0]), dtype=np.int16).astype(np.float64)
    energy = float(np.dot(samples, samples))
    if energy <= 0:
        return -127
    rms = math.sqrt(energy / (frame.samples * 32767.0 * 32767.0))
    return round(max(-127.0, min(0.0, 20.0 * math.log10(rms))))


def install() -> None:
    aiortc.rtp.compute_audio_level_dbov = audio_level_dbov
