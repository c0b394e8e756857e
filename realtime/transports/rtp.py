"""RTP packets (RFC 3550) and RFC 4733 telephone events, as much as a G.711 phone call needs.

No RTCP, no header extensions written, no SRTP: SIP trunks send plain RTP/AVP to a media server, and the
receive side tolerates (skips) CSRCs, extensions and padding so any conforming sender works.
"""

from __future__ import annotations

import random
import struct
from collections import deque
from dataclasses import dataclass

HEADER = struct.Struct("!BBHII")
DTMF_EVENTS = "0123456789*#ABCD"
MAX_PAYLOAD = 1500


class RtpError(ValueError):
    """A datagram that is not a usable RTP packet."""


@dataclass(frozen=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool
    payload: bytes


def parse(data: bytes) -> RtpPacket:
    if len(data) < HEADER.size:
        raise RtpError(f"{len(data)} bytes is shorter than an RTP header")
    first, second, sequence, timestamp, ssrc = HEADER.unpack_from(data)
    if first >> 6 != 2:
        raise RtpError(f"RTP version {first >> 6}, expected 2")
    offset = HEADER.size + 4 * (first & 0x0F)
    if first & 0x10:  # header extension: 16-bit profile, 16-bit length in 32-bit words
        if len(data) < offset + 4:
            raise RtpError("truncated header extension")
        (words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * words
    end = len(data)
    if first & 0x20:  # padding: the last byte counts the padding bytes
        end -= data[-1]
    if offset > end:
        raise RtpError("header longer than the packet")
    return RtpPacket(second & 0x7F, sequence, timestamp, ssrc, bool(second & 0x80), bytes(data[offset:end]))


class RtpSender:
    """Numbers outgoing packets of one stream: random initial sequence, timestamp and SSRC, as RFC 3550 asks."""

    def __init__(self, payload_type: int) -> None:
        self.payload_type = payload_type
        self.ssrc = random.getrandbits(32)
        self._sequence = random.getrandbits(16)
        self._timestamp = random.getrandbits(32)
        self.packets = 0

    def packet(self, payload: bytes, samples: int, marker: bool = False) -> bytes:
        header = HEADER.pack(0x80, (0x80 if marker else 0) | self.payload_type, self._sequence, self._timestamp,
                             self.ssrc)
        self._sequence = (self._sequence + 1) & 0xFFFF
        self._timestamp = (self._timestamp + samples) & 0xFFFFFFFF
        self.packets += 1
        return header + payload


@dataclass(frozen=True)
class Digit:
    digit: str
    duration_ms: int


class DtmfReceiver:
    """Turns RFC 4733 telephone-event packets into one Digit per key press.

    A press is a run of packets sharing one RTP timestamp; its end packet is sent three times. A digit is reported
    once, at its first end packet, or when a new press starts without an end having arrived (end packets lost).
    """

    def __init__(self, clock_rate: int = 8000) -> None:
        self.clock_rate = clock_rate
        self._current: tuple[int, int, int] | None = None  # (timestamp, event, duration) of an unfinished press
        self._done: deque[int] = deque(maxlen=16)  # only the last presses can still have end packets in flight

    def push(self, packet: RtpPacket) -> list[Digit]:
        if len(packet.payload) < 4:
            raise RtpError("telephone-event payload shorter than 4 bytes")
        event, flags, duration = struct.unpack_from("!BBH", packet.payload)
        if packet.timestamp in self._done:
            return []  # the retransmitted end packets of a press already reported
        out: list[Digit] = []
        if self._current is not None and self._current[0] != packet.timestamp:
            out += self._report(*self._current)
        if flags & 0x80:
            out += self._report(packet.timestamp, event, duration)
        else:
            self._current = (packet.timestamp, event, duration)
        return out

    def _report(self, timestamp: int, event: int, duration: int) -> list[Digit]:
        self._current = None
        self._done.append(timestamp)
        if event >= len(DTMF_EVENTS):
            return []  # flash-hook and the tone events of RFC 4734 are not key presses
        return [Digit(DTMF_EVENTS[event], duration * 1000 // self.clock_rate)]
