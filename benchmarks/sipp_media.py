"""Caller audio for SIPp: speech and key presses written as a pcap of G.711 RTP that `play_pcap_audio` replays.

SIPp sends each captured UDP payload at the captured time offset, so the pcap is the caller's microphone: 20 ms
RTP packets of µ-law or A-law speech, then RFC 4733 telephone-event packets for the digits. Also the reader of
the reply RTP that Parley sends to a test's UDP socket.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from realtime.audio import Resampler
from realtime.transports import g711, rtp

FRAME = 160  # 20 ms at 8 kHz
DTMF_PT = 101
_IP_SRC, _IP_DST = bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])


def to_8k(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate == g711.RATE:
        return samples.astype(np.float32)
    r = Resampler(rate, g711.RATE)
    out = np.concatenate([r.process(samples.astype(np.float32)), r.process(np.zeros(rate // 10, np.float32))])
    return out[: samples.size * g711.RATE // rate]


@dataclass
class _Clock:
    t: float = 0.0  # send time, s
    ts: int = 0  # RTP timestamp, samples


def rtp_packets(speech8k: np.ndarray, codec: g711.Codec, digits: str = "", lead_ms: int = 200,
                after_ms: int = 1000, digit_gap_ms: int = 300, tail_ms: int = 1000) -> list[tuple[float, bytes]]:
    """(send time in s, RTP packet): silence, the speech, silence, each digit as a 100 ms key press, silence.

    Audio and telephone events share one SSRC, sequence and clock, as RFC 4733 §2.1 has them. A phone sends
    RTP for as long as the call lasts, so a long `tail_ms` keeps the line alive while a test waits.
    """
    ssrc, pt = 0x5A17E57, g711.STATIC_PAYLOAD_TYPES[codec]
    out: list[tuple[float, bytes]] = []
    clock = _Clock()

    def packet(payload_type: int, payload: bytes, marker: bool = False) -> None:
        header = rtp.HEADER.pack(0x80, (0x80 if marker else 0) | payload_type, (1000 + len(out)) & 0xFFFF,
                                 clock.ts & 0xFFFFFFFF, ssrc)
        out.append((clock.t, header + payload))

    def audio(samples: np.ndarray) -> None:
        samples = np.concatenate([samples, np.zeros(-samples.size % FRAME, np.float32)])
        for i in range(0, samples.size, FRAME):
            packet(pt, g711.encode(samples[i : i + FRAME], codec))
            clock.t += 0.02
            clock.ts += FRAME

    def silence(ms: int) -> None:
        audio(np.zeros(g711.RATE * ms // 1000, np.float32))

    silence(lead_ms)
    audio(speech8k)
    silence(after_ms)
    for digit in digits:
        code = rtp.DTMF_EVENTS.index(digit)
        for n in range(1, 6):  # 5 packets = 100 ms; the end packet is sent three times
            end = n == 5
            payload = struct.pack("!BBH", code, (0x80 if end else 0) | 10, n * FRAME)
            for _ in range(3 if end else 1):
                packet(DTMF_PT, payload, marker=n == 1)
            clock.t += 0.02
        clock.ts += 5 * FRAME
        silence(digit_gap_ms)
    silence(tail_ms)
    return out


def write_pcap(path: Path, packets: list[tuple[float, bytes]], sport: int = 6000, dport: int = 6002) -> Path:
    """A classic pcap (Ethernet, IPv4, UDP) holding `packets`; SIPp rewrites the addresses when it replays."""
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for t, payload in packets:
            udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, _IP_SRC, _IP_DST)
            ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
            frame = b"\x00" * 12 + b"\x08\x00" + ip + udp
            seconds, micros = divmod(round(t * 1e6), 10**6)
            f.write(struct.pack("<IIII", seconds, micros, len(frame), len(frame)))
            f.write(frame)
    return path


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@dataclass
class ReplyStream:
    """Reply RTP of one call as it arrived at the phone side."""

    times: list[float] = field(default_factory=list)
    levels: list[float] = field(default_factory=list)
    payload_types: set[int] = field(default_factory=set)
    sizes: set[int] = field(default_factory=set)
    sequences: list[int] = field(default_factory=list)
    pcm: list[np.ndarray] = field(default_factory=list)

    def add(self, at: float, packet: rtp.RtpPacket, codec: g711.Codec) -> None:
        pcm = g711.decode(packet.payload, codec).astype(np.float32) / 32768.0
        self.times.append(at)
        self.levels.append(20.0 * np.log10(max(float(np.sqrt(np.mean(pcm * pcm))), 1e-6)))
        self.payload_types.add(packet.payload_type)
        self.sizes.add(len(packet.payload))
        self.sequences.append(packet.sequence)
        self.pcm.append(pcm)

    def onset_after(self, t: float, dbfs: float = -45.0) -> float | None:
        return next((at for at, lv in zip(self.times, self.levels, strict=True) if at >= t and lv > dbfs), None)

    def speech_ms(self, dbfs: float = -45.0) -> float:
        return 20.0 * sum(1 for lv in self.levels if lv > dbfs)

    def audio(self) -> np.ndarray:
        return np.concatenate(self.pcm) if self.pcm else np.zeros(0, np.float32)


class RtpCapture(asyncio.DatagramProtocol):
    """The caller's media socket: every RTP packet Parley sends, per source, with its arrival time."""

    def __init__(self, codec: g711.Codec) -> None:
        self.codec = codec
        self.streams: dict[tuple[str, int], ReplyStream] = {}

    def datagram_received(self, data: bytes, addr: Any) -> None:
        packet = rtp.parse(data)
        self.streams.setdefault((addr[0], addr[1]), ReplyStream()).add(time.monotonic(), packet, self.codec)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
