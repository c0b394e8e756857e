"""The audio path's parts: resampling, the ring, VAD segmentation with real Silero, playout, the receive buffer."""

from __future__ import annotations

import numpy as np
import pytest

from models.assets import model_path
from realtime.audio import ENGINE_RATE, AudioRing, Resampler
from realtime.listener import SpeechSegmenter, SpeechStart, SpeechStop
from realtime.playout import Playout
from tests.conftest import librivox, silence, speak


def test_resampler_keeps_duration_and_pitch() -> None:
    t = np.arange(48000) / 48000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    r = Resampler(48000, 16000)
    out = np.concatenate([r.process(tone[i : i + 960]) for i in range(0, tone.size, 960)])
    assert abs(out.size - 16000) < 200
    spectrum = np.abs(np.fft.rfft(out[1000:15000]))
    peak_hz = np.argmax(spectrum) * 16000 / (15000 - 1000)
    assert abs(peak_hz - 440) < 5


def test_ring_returns_recent_audio_by_absolute_index() -> None:
    ring = AudioRing(1000)
    data = np.arange(2500, dtype=np.float32)
    for i in range(0, 2500, 300):
        ring.append(data[i : i + 300])
    assert ring.start == 1500 and ring.end == 2500
    assert np.array_equal(ring.slice(1400, 1600), data[1500:1600])
    assert ring.slice(0, 100).size == 0


def vad_events(audio16k: np.ndarray, threshold: float = 0.5) -> list[SpeechStart | SpeechStop]:
    from models.embedded.silero import FRAME_SAMPLES, SileroVad

    stream = SileroVad(model_path("silero-vad") / "silero_vad.onnx").open_stream()
    seg = SpeechSegmenter(FRAME_SAMPLES, threshold, min_speech_ms=64)
    events = []
    for i in range(0, audio16k.size - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        end = i + FRAME_SAMPLES
        ev = seg.push(stream.probability(audio16k[i:end]), end * 1000 / ENGINE_RATE, end)
        if ev is not None:
            events.append(ev)
    return events


def to16k(audio: np.ndarray, rate: int) -> np.ndarray:
    r = Resampler(rate, ENGINE_RATE)
    return np.concatenate([r.process(audio), r.process(np.zeros(rate // 10, np.float32))])


def test_silero_finds_human_speech_and_dates_its_end() -> None:
    audio, rate, _ = librivox("0880")
    padded = np.concatenate([np.zeros(rate // 2, np.float32), audio, np.zeros(rate, np.float32)])
    events = vad_events(to16k(padded, rate))
    assert isinstance(events[0], SpeechStart) and isinstance(events[-1], SpeechStop)
    assert 300 <= events[0].at_ms <= 900
    speech_end_ms = (rate // 2 + audio.size) / rate * 1000
    # Dated by the last speech window, not by when the VAD noticed: within ~100 ms of the real end.
    assert abs(events[-1].speech_end_ms - speech_end_ms) < 350


def test_a_pause_inside_a_sentence_is_a_stop_and_a_start() -> None:
    first, rate = speak("What is the capital")
    second, _ = speak("of France?")
    audio = to16k(np.concatenate([silence(300), first, silence(450), second, silence(600)]), rate)
    kinds = [type(e).__name__ for e in vad_events(audio)]
    assert kinds == ["SpeechStart", "SpeechStop", "SpeechStart", "SpeechStop"], kinds


def test_silence_and_noise_are_not_speech() -> None:
    rng = np.random.default_rng(0)
    assert vad_events(np.zeros(ENGINE_RATE * 2, np.float32)) == []
    assert vad_events((rng.standard_normal(ENGINE_RATE * 2) * 0.003).astype(np.float32)) == []


def test_playout_counts_what_was_played_and_fills_gaps_with_silence() -> None:
    started: list[str] = []
    finished: list[str] = []
    p = Playout(48000, 20, on_started=started.append, on_finished=finished.append)
    assert not p.next_frame().any() and p.frame_samples == 960
    p.enqueue("g1", np.ones(2400, np.float32))
    frames = [p.next_frame() for _ in range(2)]
    assert started == ["g1"] and all(f.all() for f in frames)
    assert p.played_ms("g1") == pytest.approx(40)
    assert p.stop("g1") == pytest.approx(40)
    assert not p.next_frame().any(), "stopped audio never plays"
    p.enqueue("g1", np.ones(960, np.float32))  # a chunk the cancelled decoder finished after the stop
    assert not p.next_frame().any(), "nor does audio that arrives after the stop"
    p.enqueue("g2", np.ones(1000, np.float32))
    p.end("g2")
    p.next_frame()
    assert finished == [] and p.next_frame()[:40].all()
    assert finished == ["g2"]


def test_in_order_buffer_releases_at_once_and_drops_late_packets() -> None:
    from aiortc.rtp import RtpPacket

    from realtime.transports.aiortc_tuning import InOrderBuffer

    buf = InOrderBuffer()

    def packet(seq: int) -> RtpPacket:
        p = RtpPacket(sequence_number=seq, timestamp=seq * 960)
        p._data = bytes([seq % 256])  # type: ignore[attr-defined]
        return p

    released = [buf.add(packet(s))[1] for s in (65534, 65535, 0, 2, 1, 2, 3)]
    assert [f.data[0] if f else None for f in released] == [254, 255, 0, 2, None, None, 3]
    assert buf.dropped == 2


def _tone_frames(hz: float, n: int) -> list:
    from fractions import Fraction

    from av import AudioFrame

    t = np.arange(960 * n) / 48000.0
    pcm = (0.3 * np.sin(2 * np.pi * hz * t) * 32767).astype(np.int16)
    frames = []
    for i in range(n):
        f = AudioFrame.from_ndarray(pcm[None, i * 960 : (i + 1) * 960], format="s16", layout="mono")
        f.sample_rate, f.pts, f.time_base = 48000, i * 960, Fraction(1, 48000)
        frames.append(f)
    return frames


def test_replies_go_out_as_mono_opus_that_any_opus_decoder_plays() -> None:
    from aiortc.codecs.opus import OpusDecoder, OpusEncoder
    from aiortc.jitterbuffer import JitterFrame

    from realtime.transports.aiortc_tuning import MonoOpusEncoder

    mono, stereo = MonoOpusEncoder(), OpusEncoder()
    packets, stereo_bytes = [], 0
    for frame in _tone_frames(440.0, 50):
        payloads, timestamp = mono.encode(frame)
        packets += [(p, timestamp) for p in payloads]
        stereo_bytes += sum(len(p) for p in stereo.encode(frame)[0])
    assert len(packets) >= 48
    assert all(p[0] & 0x04 == 0 for p, _ in packets)  # the TOC byte's stereo flag (RFC 6716 §3.1) is off
    assert sum(len(p) for p, _ in packets) < 0.8 * stereo_bytes  # less bandwidth than aiortc's stereo stream
    # A browser's (or aiortc's stock) stereo decoder plays it: both channels carry the tone, in pitch.
    decoder = OpusDecoder()
    pcm = np.concatenate([f.to_ndarray().reshape(-1, 2) for p, ts in packets
                          for f in decoder.decode(JitterFrame(data=p, timestamp=ts))])
    assert np.array_equal(pcm[:, 0], pcm[:, 1])
    tail = pcm[-24000:, 0].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(tail))
    assert abs(np.argmax(spectrum) * 48000 / tail.size - 440.0) < 5.0


def test_decoder_thread_hands_mono_frames_to_the_loop_and_ends_the_track() -> None:
    import asyncio
    import queue
    import threading

    from aiortc.codecs.opus import OpusEncoder
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from realtime.transports.aiortc_tuning import decoder_worker

    codec = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
    encoder = OpusEncoder()  # what a browser sends: stereo Opus
    encoded = []
    for frame in _tone_frames(300.0, 20):
        payloads, ts = encoder.encode(frame)
        encoded += [(p, ts) for p in payloads]

    async def run() -> tuple[list, bool]:
        from aiortc.jitterbuffer import JitterFrame

        out: asyncio.Queue = asyncio.Queue()
        inq: queue.Queue = queue.Queue()
        for p, ts in encoded:
            inq.put((codec, JitterFrame(data=p, timestamp=ts)))
        inq.put((codec, JitterFrame(data=b"\xff" * 3, timestamp=0)))  # garbage: logged, flagged, not fatal
        inq.put(None)
        error = threading.Event()
        thread = threading.Thread(target=decoder_worker, args=(asyncio.get_running_loop(), inq, out, error))
        thread.start()
        frames = []
        while (frame := await asyncio.wait_for(out.get(), 5)) is not None:
            frames.append(frame)
        thread.join(5)
        return frames, error.is_set()

    frames, flagged = asyncio.run(run())
    assert len(frames) == len(encoded) and flagged
    assert all(f.layout.name == "mono" and f.sample_rate == 48000 and f.samples == 960 for f in frames)
