"""One answered SIP call's media: an RTP socket, G.711 both ways in 20 ms packets, DTMF, and the session.

    caller RTP ──▶ source check ──▶ PCMU/PCMA → 16 kHz ──▶ session.push_audio
                          └──▶ RFC 4733 telephone-event ──▶ input_audio_buffer.dtmf
    session.playout ──▶ one frame per FrameClock tick ──▶ G.711 RTP ──▶ the address the caller's SDP named

Only RTP from the caller is taken: from its SDP address or its signalling address, and, once the first packet
arrived, from that exact source (ip, port) only. Anything else is counted and dropped, so a stray or spoofed
stream can neither talk into the call nor fake key presses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from realtime import events
from realtime.transports import g711, phone, rtp, sdp
from realtime.transports.owned_tasks import OwnedTasks

if TYPE_CHECKING:
    from realtime.config import SessionConfig
    from realtime.engine import Engine
    from realtime.session import Session

log = logging.getLogger(__name__)

COMFORT_NOISE_PT = 13
_REORDER_WINDOW = 100  # packets this far behind the newest are late duplicates, not a restarted stream
_SILENCE = {codec: bytes([g711.SILENCE_BYTE[codec]]) * phone.FRAME_SAMPLES for codec in g711.CODECS}


@dataclass
class MediaStats:
    packets_in: int = 0
    packets_out: int = 0
    dtmf_digits: int = 0
    dropped_unknown_source: int = 0
    dropped_malformed: int = 0
    dropped_payload_type: int = 0
    dropped_late: int = 0
    unknown_sources: set[tuple[str, int]] = field(default_factory=set)


class _RtpProtocol(asyncio.DatagramProtocol):
    def __init__(self, on_packet: Callable[[bytes, tuple[str, int]], None]) -> None:
        self._on_packet = on_packet

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._on_packet(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a caller that stopped listening: the media timeout ends the call.
        log.debug("RTP socket error: %s", exc)


class SipCall:
    """A session fed by RTP; `close()` releases the socket and the session and calls `on_closed`."""

    kind = "sip"
    sample_rate = g711.RATE

    def __init__(self, engine: Engine, call_id: str, media: sdp.Negotiated, signalling_host: str,
                 on_closed: Callable[[SipCall, str], None]) -> None:
        self.engine = engine
        self.call_id = call_id
        self.media = media
        self.stats = MediaStats()
        self.session: Session | None = None
        self.local_port = 0
        self._allowed_hosts = {media.remote[0], signalling_host}
        self._source: tuple[str, int] | None = None
        self._on_closed = on_closed
        self._transport: asyncio.DatagramTransport | None = None
        self._audio = phone.PhoneAudio(media.codec)
        self._sender = rtp.RtpSender(media.payload_type)
        self._dtmf = rtp.DtmfReceiver()
        self._last_seq: dict[int, int] = {}
        self._clock = phone.FrameClock()
        self._tasks = OwnedTasks()
        self._last_media = time.monotonic()
        self._closed = False

    # --- TransportLink -------------------------------------------------------------------------------------

    def unheard_ms(self) -> float:
        return 0.0  # RTP is paced in real time; the phone's own jitter buffer is not visible from here

    def send_event(self, event: dict[str, Any]) -> None:
        # A phone has no channel for Parley's events (the event tap has them).
        if event.get("type") == "error":
            log.warning("sip call %s: %s", self.call_id, event.get("error"))

    # --- setup -----------------------------------------------------------------------------------------------

    async def bind(self, host: str, port_min: int, port_max: int) -> None:
        """Take an even port of the range (RTP convention; RTCP would be the odd one above)."""
        loop = asyncio.get_running_loop()
        first = port_min + (port_min & 1)
        count = max(1, (port_max - first) // 2 + 1)
        offset = int(time.monotonic() * 1000) % count  # spread calls over the range, as ports linger in TIME_WAIT
        for i in range(count):
            port = first + 2 * ((offset + i) % count)
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _RtpProtocol(self._received), local_addr=(host, port))
            except OSError:
                continue
            self._transport = transport
            self.local_port = port
            return
        raise OSError(f"no free RTP port in {port_min}-{port_max}")

    def start(self, settings: SessionConfig) -> None:
        """Open the session (raises CapacityError) and start sending; call once the 200 OK is out."""
        self.session = self.engine.open_session(self, settings)
        self.session.start()
        self._last_media = time.monotonic()
        self._spawn(self._send_loop())
        self._spawn(self._watchdog())

    def update(self, media: sdp.Negotiated, signalling_host: str) -> None:
        """A re-INVITE's new offer (hold, a moved media endpoint, another codec)."""
        if media.codec != self.media.codec:
            self._audio = phone.PhoneAudio(media.codec)
        if media.payload_type != self.media.payload_type:
            self._sender = rtp.RtpSender(media.payload_type)
        if media.remote != self.media.remote:
            self._source = None
            self._allowed_hosts = {media.remote[0], signalling_host}
        self.media = media
        self._last_media = time.monotonic()  # coming back from hold starts the media timeout afresh

    # --- incoming --------------------------------------------------------------------------------------------

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._closed or self.session is None:
            return
        if self._source is None and addr[0] in self._allowed_hosts:
            self._source = addr
        if addr != self._source:
            self.stats.dropped_unknown_source += 1
            if addr not in self.stats.unknown_sources and len(self.stats.unknown_sources) < 8:
                self.stats.unknown_sources.add(addr)
                log.warning("sip call %s: dropping RTP from %s:%d (the caller's media comes from %s)",
                            self.call_id, addr[0], addr[1], self._source or sorted(self._allowed_hosts))
            return
        try:
            packet = rtp.parse(data)
        except rtp.RtpError:
            self.stats.dropped_malformed += 1
            return
        if self._is_late(packet):
            self.stats.dropped_late += 1
            return
        self._last_media = time.monotonic()
        self.stats.packets_in += 1
        if packet.payload_type == self.media.payload_type:
            if not 0 < len(packet.payload) <= rtp.MAX_PAYLOAD:
                self.stats.dropped_malformed += 1
                return
            self.session.push_audio(self._audio.decode(packet.payload))
        elif packet.payload_type == self.media.dtmf_payload_type:
            try:
                digits = self._dtmf.push(packet)
            except rtp.RtpError:
                self.stats.dropped_malformed += 1
                return
            for digit in digits:
                self.stats.dtmf_digits += 1
                self.session.notify(events.event("input_audio_buffer.dtmf", digit=digit.digit,
                                                 duration_ms=digit.duration_ms, transport=self.kind))
        elif packet.payload_type != COMFORT_NOISE_PT:
            self.stats.dropped_payload_type += 1

    def _is_late(self, packet: rtp.RtpPacket) -> bool:
        last = self._last_seq.get(packet.ssrc)
        if last is not None:
            behind = (last - packet.sequence) & 0xFFFF
            if behind < _REORDER_WINDOW:  # a duplicate (0) or older than the newest: VAD wants order, not repair
                return True
        if len(self._last_seq) > 8:
            self._last_seq.clear()
        self._last_seq[packet.ssrc] = packet.sequence
        return False

    # --- outgoing --------------------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        try:
            await self._send_frames()
        except Exception:
            # A silent call is worse than a dropped one: the caller would wait for a reply that never comes.
            log.exception("sip call %s: sending failed", self.call_id)
            self._spawn(self.close("internal_error"))

    async def _send_frames(self) -> None:
        assert self.session is not None
        playout = self.session.playout
        talking = False
        while not self._closed:
            await self._clock.tick()
            before = playout.speech_frames_out
            frame = playout.next_frame()
            speech = playout.speech_frames_out > before
            payload = self._audio.encode(frame) if speech else _SILENCE[self.media.codec]
            # The offer's direction is the caller's: it listens unless it said sendonly (hold) or inactive.
            if self.media.direction in ("sendrecv", "recvonly") and self._transport is not None:
                # The marker bit starts a talkspurt, so the phone may re-centre its jitter buffer there.
                packet = self._sender.packet(payload, phone.FRAME_SAMPLES, marker=speech and not talking)
                target = self._source if self.engine.config.telephony.rtp_symmetric and self._source else None
                self._transport.sendto(packet, target or self.media.remote)
                self.stats.packets_out += 1
            talking = speech

    async def _watchdog(self) -> None:
        timeout = self.engine.config.telephony.media_timeout_ms / 1000.0
        while not self._closed:
            await asyncio.sleep(min(1.0, timeout / 4))
            sends = self.media.direction in ("sendrecv", "sendonly")
            if sends and time.monotonic() - self._last_media > timeout:
                log.warning("sip call %s: no RTP for %.1f s, hanging up", self.call_id, timeout)
                self._spawn(self.close("media_timeout"))
                return

    # --- teardown --------------------------------------------------------------------------------------------

    async def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._tasks.cancel_all()
        if self._transport is not None:
            self._transport.close()
        if self.session is not None:
            await self.engine.close_session(self.session, reason)
        stats = {k: v for k, v in vars(self.stats).items() if k != "unknown_sources"}
        log.info("sip call %s ended (%s): %s, late frames %d", self.call_id, reason, stats, self._clock.late_frames)
        self._on_closed(self, reason)

    def _spawn(self, coro: Any) -> None:
        self._tasks.spawn(coro)
