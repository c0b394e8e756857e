"""When each reply packet left the server and when it arrived, from RTP timestamps and RTCP sender reports.

Reply audio often starts with silence (a TTS pads its output), so "the first audible frame" cannot tell when the
engine put a chunk on the wire. Packets can: aiortc's sender reports (RTCP SR, every 0.5–1.5 s) pair the NTP wall
time at which a packet was sent with its RTP timestamp. On one host the wall clocks agree, so with the best-paced
report as the anchor every packet's nominal send time is known, and so is the packet that carried audio handed to
the wire at a given moment — whatever that audio sounded like.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtcpSrPacket, RtpPacket

MEDIA_RATE = 48000
NTP_TO_UNIX_S = 2208988800
FRAME_S = 0.02
SLACK_S = 0.002


@dataclass
class WireLog:
    """Arrivals of RTP packets (client monotonic s, RTP timestamp) and the sender's SR (wall s, RTP timestamp)."""

    arrivals: list[tuple[float, int]] = field(default_factory=list)
    reports: list[tuple[float, int]] = field(default_factory=list)
    # time.time() - time.monotonic() on this host: moves the server's NTP wall times onto the monotonic clock.
    wall_minus_mono: float = field(default_factory=lambda: time.time() - time.monotonic())

    def _unwrap(self, ts: int) -> int:
        # Signed distance from the first packet received, modulo 2^32: a sender report may describe a packet sent
        # before that one (lost while the connection came up), which must come out negative, not ~2^32.
        d = (ts - self.arrivals[0][1]) % (1 << 32)
        return d - (1 << 32) if d >= (1 << 31) else d

    def anchor(self) -> float | None:
        """Client-monotonic nominal send time of the first packet (the best-paced report's view)."""
        if not self.arrivals or not self.reports:
            return None
        return min(wall - self.wall_minus_mono - self._unwrap(ts) / MEDIA_RATE for wall, ts in self.reports)

    def packet_sent_at(self, t: float, not_before: float = float("-inf")) -> tuple[float, float] | None:
        """(nominal send time, arrival time) of the packet carrying what the sender took at time t.

        The frame taken at t is the one whose 20 ms slot holds t. Slots are known from send times, which trail
        the take by the encoding (well under SLACK_S); a packet that arrived before `not_before` (the audio was not
        ready yet) cannot be it either.
        """
        anchor = self.anchor()
        if anchor is None:
            return None
        wanted = int((t - anchor + SLACK_S) // FRAME_S) * round(FRAME_S * MEDIA_RATE)
        for arrival, ts in self.arrivals:
            offset = self._unwrap(ts)
            if offset >= wanted and arrival >= not_before:
                return anchor + offset / MEDIA_RATE, arrival
        return None

    def transit_ms(self) -> list[float]:
        """Per packet: arrival − nominal send time (sender lateness + network + receiving), in ms."""
        anchor = self.anchor()
        if anchor is None:
            return []
        return [(arrival - anchor - self._unwrap(ts) / MEDIA_RATE) * 1000.0 for arrival, ts in self.arrivals]


def watch_receiver(receiver: RTCRtpReceiver, log: WireLog) -> None:
    """Record RTP arrivals and sender reports as the receiver gets them (wraps two aiortc methods)."""
    handle_rtp: Callable[[RtpPacket, int], Awaitable[None]] = receiver._handle_rtp_packet
    handle_rtcp: Callable[[Any], Awaitable[None]] = receiver._handle_rtcp_packet

    async def on_rtp(packet: RtpPacket, arrival_time_ms: int) -> None:
        log.arrivals.append((time.monotonic(), packet.timestamp))
        await handle_rtp(packet, arrival_time_ms)

    async def on_rtcp(packet: Any) -> None:
        if isinstance(packet, RtcpSrPacket):
            ntp = packet.sender_info.ntp_timestamp
            wall = (ntp >> 32) - NTP_TO_UNIX_S + (ntp & 0xFFFFFFFF) / float(1 << 32)
            log.reports.append((wall, packet.sender_info.rtp_timestamp))
        await handle_rtcp(packet)

    receiver._handle_rtp_packet = on_rtp  # type: ignore[method-assign]
    receiver._handle_rtcp_packet = on_rtcp  # type: ignore[method-assign]
