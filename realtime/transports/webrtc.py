"""A WebRTC call: one RTCPeerConnection per session carrying mic audio in, reply audio out and JSON events.

    client mic track ──RTP/Opus──▶ reader: PyAV → 16 kHz mono ──▶ session.push_audio
    session.playout ──▶ PlayoutTrack.recv() every 20 ms ──RTP/Opus──▶ client speaker
    data channel "events" ◀──▶ session.handle_client_event / link.send_event

With an `EventCodec` the data channel speaks another protocol (OpenAI Realtime's `oai-events`): the codec turns
client messages into session calls and session events into that protocol's events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from realtime.audio import ENGINE_RATE, Resampler, to_int16
from realtime.config import SessionConfig
from realtime.playout import Playout
from realtime.transports import aiortc_tuning, ice
from realtime.transports.owned_tasks import OwnedTasks
from realtime.transports.trackclock import TrackClock

if TYPE_CHECKING:
    from realtime.engine import Engine
    from realtime.session import Session

log = logging.getLogger(__name__)

OUT_RATE = 48000
MAX_QUEUED_EVENTS = 200  # events sent before the data channel opens


class EventCodec(Protocol):
    def incoming(self, raw: str | bytes) -> None: ...

    def outgoing(self, event: dict[str, Any]) -> None: ...


class OfferError(ValueError):
    """The offer cannot be answered (malformed SDP, no audio); the HTTP layer answers 400."""


class PlayoutTrack(MediaStreamTrack):
    """Outgoing audio paced by the wall clock: a frame every 20 ms, silence when nothing is queued."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.playout: Playout | None = None
        self._clock: TrackClock | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live" or self.playout is None:
            raise MediaStreamError
        playout = self.playout
        rate = playout.sample_rate
        if self._clock is None:
            self._clock = TrackClock(rate)
        pts = await self._clock.next_frame(playout.frame_samples)
        samples = playout.next_frame()
        # Most frames of a call are silence: skip the float→int16 conversion for them.
        pcm = to_int16(samples)[None, :] if samples.any() else np.zeros((1, samples.size), np.int16)
        frame = AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = pts
        frame.time_base = Fraction(1, rate)
        return frame


class WebRTCCall:
    """Owns the peer connection and the session for one call; `close()` releases both, whatever the cause."""

    kind = "webrtc"
    sample_rate = OUT_RATE

    def __init__(self, engine: Engine, registry: set[WebRTCCall], channel_label: str = "events") -> None:
        self.engine = engine
        self.channel_label = channel_label
        self.codec: EventCodec | None = None
        self.config = engine.config
        self._registry = registry
        self.pc = RTCPeerConnection(ice.rtc_configuration(self.config.ice))
        self.session: Session | None = None
        self.channel: RTCDataChannel | None = None
        self.track = PlayoutTrack()
        self._queued: deque[str] = deque(maxlen=MAX_QUEUED_EVENTS)
        self._tasks = OwnedTasks()
        self._last_media: float | None = None
        self._closed = False
        registry.add(self)

    # --- TransportLink -------------------------------------------------------------------------------------

    def unheard_ms(self) -> float:
        return 0.0  # paced in real time; a client that knows better sends conversation.item.truncate

    def send_event(self, event: dict[str, Any]) -> None:
        if self.codec is not None:
            self.codec.outgoing(event)  # it sends what it makes with send_wire
        else:
            self.send_wire(event)

    def send_wire(self, event: dict[str, Any]) -> None:
        """An event exactly as the data channel carries it (queued until the channel opens)."""
        text = json.dumps(event)
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            channel.send(text)
        elif channel is None or channel.readyState == "connecting":
            self._queued.append(text)

    # --- setup -----------------------------------------------------------------------------------------------

    async def accept(self, offer_sdp: str, settings: SessionConfig) -> str:
        """Answer an offer; raises OfferError (bad offer) or CapacityError, after releasing everything."""
        try:
            return await self._accept(offer_sdp, settings)
        except Exception:
            await self.close("setup_failed")
            raise

    async def _accept(self, offer_sdp: str, settings: SessionConfig) -> str:
        pc = self.pc
        self.session = self.engine.open_session(self, settings)
        self.on_session(self.session)
        self.track.playout = self.session.playout

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label != self.channel_label:
                return
            self.channel = channel

            @channel.on("message")
            def on_message(message: str | bytes) -> None:
                if self.codec is not None:
                    self.codec.incoming(message)
                elif self.session is not None:
                    self.session.handle_client_event(message)

            @channel.on("close")
            def on_close() -> None:
                self._spawn(self.close("hangup"))

            def opened() -> None:
                if self.session is not None:
                    self.session.start()
                while self._queued and channel.readyState == "open":
                    channel.send(self._queued.popleft())

            if channel.readyState == "open":
                opened()
            else:
                channel.on("open", opened)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self._spawn(self._read(track))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close(f"connection_{pc.connectionState}")

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise OfferError(f"the offer's SDP could not be parsed: {exc}") from None
        audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
        if not audio:
            raise OfferError("the offer has no audio m-line; Parley needs one to talk back")
        for transceiver in audio:
            aiortc_tuning.tune_receiver(transceiver.receiver, self.config.webrtc.receive_prefetch)
        # Also for receive-only offers: the reply goes out on the same connection.
        audio[0].sender.replaceTrack(self.track)
        if audio[0].direction == "recvonly":
            audio[0].direction = "sendrecv"
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)  # aiortc gathers all candidates here (no trickle)
        self._spawn(self._watchdog())
        return pc.localDescription.sdp

    def on_session(self, session: Session) -> None:
        """Hook: the session exists (the peer connection is not negotiated yet)."""

    # --- media -----------------------------------------------------------------------------------------------

    async def _read(self, track: MediaStreamTrack) -> None:
        resampler = Resampler(OUT_RATE, ENGINE_RATE)
        try:
            while True:
                frame = await track.recv()
                self._last_media = time.monotonic()
                if self.session is not None:
                    self.session.push_audio(resampler.process_frame(frame))  # type: ignore[arg-type]
        except MediaStreamError:
            await self.close("remote_track_ended")

    async def _watchdog(self) -> None:
        # aioice's consent checks notice a vanished peer only after ~30 s; audio stopping is a faster sign.
        timeout = self.config.webrtc.media_timeout_ms / 1000.0
        while not self._closed:
            await asyncio.sleep(min(1.0, timeout / 4))
            if self._last_media is not None and time.monotonic() - self._last_media > timeout:
                await self.close("media_timeout")
                return

    # --- teardown --------------------------------------------------------------------------------------------

    async def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        if self.session is not None:
            await self.engine.close_session(self.session, reason)
        self._tasks.cancel_all()
        self.track.stop()
        await self.pc.close()
        self._registry.discard(self)

    def _spawn(self, coro: Any) -> None:
        self._tasks.spawn(coro)
