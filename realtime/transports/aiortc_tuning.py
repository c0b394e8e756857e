"""aiortc behaviours a voice server must change (aiortc is pinned to 1.16.x for these).

1. The audio receive jitter buffer waits for 4 packets before releasing the first (~80 ms, JitterBuffer
   prefetch=4). That delay exists for smooth *playout*; Parley never plays what it receives, it feeds a VAD and a
   tokenizer, which need packets in order but not evenly spaced. `InOrderBuffer` releases each packet as it
   arrives and drops duplicates and packets older than one already released (a reordered packet becomes a 20 ms
   loss, which the VAD and tokenizer tolerate). Arrival jitter therefore adds no delay at all. Set
   `[webrtc] receive_prefetch` above 0 to restore aiortc's buffer with that prefetch.
2. aiortc computes an RFC 6465 audio level for every outgoing frame in a pure-Python loop (90–175 µs a frame);
   numpy does the same sum in a few µs, which matters at 24+ sessions on 2 cores.
3. aiortc encodes every outgoing Opus stream as stereo at 96 kbit/s. Parley speaks mono, so it encodes mono
   (`MonoOpusEncoder`): about 40 % less encoder CPU a call and a third less bandwidth, with the same SDP
   (`opus/48000/2` allows a mono stream, RFC 7587 §7) and nothing for a browser to change.
4. aiortc's decoder thread hands every decoded frame to the event loop as a coroutine wrapped in a Task
   (`run_coroutine_threadsafe`), 50 Tasks a second a call, and decodes Opus to stereo the engine then downmixes.
   `decoder_worker` decodes Opus to mono and hands frames over with `call_soon_threadsafe(put_nowait)`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
from typing import Any

import aiortc.codecs.opus
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import aiortc.rtp
import av
import numpy as np
from aiortc.codecs import get_decoder, get_encoder
from aiortc.codecs.base import Decoder, Encoder
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket
from av import AudioFrame

log = logging.getLogger(__name__)

OPUS_MONO_BITRATE = 64000  # speech: transparent in mono at this rate; aiortc sends 96000 for two channels


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


class MonoOpusEncoder(OpusEncoder):
    """aiortc's Opus encoder (same 20 ms packets and timestamps), one channel instead of two."""

    def __init__(self) -> None:  # aiortc's __init__ would open a stereo encoder first, only to be replaced
        self.first_packet_pts: int | None = None
        self.codec = av.CodecContext.create("libopus", "w")
        self.codec.bit_rate = OPUS_MONO_BITRATE
        self.codec.format = "s16"
        self.codec.layout = "mono"
        self.codec.options = {"application": "voip"}
        self.codec.sample_rate = 48000
        self.codec.time_base = aiortc.codecs.opus.TIME_BASE
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=48000, frame_size=960)

    def encode(self, frame: av.frame.Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        # Parley's own frames are already 20 ms of s16 mono at 48 kHz: reframing them through the resampler
        # cost a third of the encoder's time. Anything else takes aiortc's path.
        if not (isinstance(frame, AudioFrame) and frame.samples == 960 and frame.sample_rate == 48000
                and frame.format.name == "s16" and frame.layout.name == "mono"):
            return super().encode(frame, force_keyframe)
        packets = self.codec.encode(frame)
        if not packets:
            return [], 0  # the sender sends nothing for an empty list, whatever the timestamp
        pts = int(packets[0].pts or 0)
        if self.first_packet_pts is None:
            self.first_packet_pts = pts
        return [bytes(p) for p in packets], pts - self.first_packet_pts


class MonoOpusDecoder(OpusDecoder):
    def __init__(self) -> None:
        self.codec = av.CodecContext.create("libopus", "r")
        self.codec.format = "s16"
        self.codec.layout = "mono"
        self.codec.sample_rate = 48000


def encoder_for(codec: RTCRtpCodecParameters) -> Encoder:
    return MonoOpusEncoder() if codec.mimeType.lower() == "audio/opus" else get_encoder(codec)


def decoder_for(codec: RTCRtpCodecParameters) -> Decoder:
    return MonoOpusDecoder() if codec.mimeType.lower() == "audio/opus" else get_decoder(codec)


def decoder_worker(loop: asyncio.AbstractEventLoop, input_q: queue.Queue[Any], output_q: asyncio.Queue[Any],
                   decode_error: threading.Event) -> None:
    """The receiver's decoding thread (same contract as aiortc's): frames of `input_q` out to `output_q`, None
    at the end. A decode error is logged and flagged but keeps the decoder, as aiortc does."""
    name, decoder = "", None
    try:
        while (task := input_q.get()) is not None:
            codec, encoded = task
            if decoder is None or codec.name != name:
                name, decoder = codec.name, decoder_for(codec)
            try:
                frames = decoder.decode(encoded)
            except av.FFmpegError as exc:
                log.warning("failed to decode a %s frame: %s", codec.name, exc)
                decode_error.set()
                continue
            for frame in frames:
                loop.call_soon_threadsafe(output_q.put_nowait, frame)
        loop.call_soon_threadsafe(output_q.put_nowait, None)
    except RuntimeError:
        pass  # the loop closed under a call that was never closed: nobody is left to read


def install() -> None:
    aiortc.rtp.compute_audio_level_dbov = audio_level_dbov
    aiortc.rtcrtpsender.get_encoder = encoder_for
    aiortc.rtcrtpreceiver.decoder_worker = decoder_worker
