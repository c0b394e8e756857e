"""GET /v1/realtime: an OpenAI Realtime WebSocket carrying one Parley session.

    client ──input_audio_buffer.append (base64 pcm16 24 kHz, or G.711 8 kHz)──▶ decode → 16 kHz ──▶ session
    session.playout ──▶ one 20 ms frame per FrameClock tick ──▶ response.output_audio.delta (silent frames skipped)
    every other event ◀──▶ RealtimeProtocol

Reply audio leaves in real time, like the phone transports: what was sent is about what the client has played,
so a barge-in truncates the context close to what was heard. Input audio is dated on its own timeline: a client
may send faster than real time (a file), and the session then hears it as if spoken, never earlier than it
arrived; a client that falls behind is heard when its audio arrives.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import WSMsgType, web

from realtime.audio import ENGINE_RATE, Resampler
from realtime.config import ConfigError
from realtime.engine import CapacityError
from realtime.httpanswers import refused
from realtime.openai_realtime.protocol import RealtimeProtocol, encoder
from realtime.openai_realtime.session_config import FORMAT_RATES, WireSettings
from realtime.transports import g711, phone
from realtime.transports.owned_tasks import OwnedTasks

if TYPE_CHECKING:
    from realtime.engine import Engine
    from realtime.session import Session

log = logging.getLogger(__name__)

ROUTE = "/v1/realtime"
OUT_RATE = 24000  # the playout's rate; G.711 output is resampled from it per frame
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # ~65 s of base64 pcm16 at 24 kHz in one append
MAX_QUEUED = 3000  # events waiting for a client that does not read (~60 s of audio deltas): then it is dropped


def wants_extensions(request: web.Request) -> bool:
    return request.query.get("parley_extensions", "").lower() in ("1", "true", "yes")


class RealtimeWebSocket:
    """The TransportLink of one /v1/realtime connection; `close()` releases the session, whatever the cause."""

    kind = "websocket"
    sample_rate = OUT_RATE

    def __init__(self, engine: Engine, ws: web.WebSocketResponse, wire: WireSettings, extensions: bool) -> None:
        self.engine = engine
        self.ws = ws
        self.protocol = RealtimeProtocol(self.send_wire, audio_in_events=True,
                                         extensions=extensions, wire=wire)
        self.session: Session | None = None
        self._out: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._clock = phone.FrameClock()
        self._tasks = OwnedTasks()
        self._next_at_ms = 0.0
        self._decoder: tuple[str, Resampler] | None = None
        self._encoder: tuple[str, Resampler | None] = ("audio/pcm", None)
        self._closed = False

    # --- TransportLink -------------------------------------------------------------------------------------

    def send_event(self, event: dict[str, Any]) -> None:
        self.protocol.outgoing(event)

    def unheard_ms(self) -> float:
        return 0.0  # sent in real time; a client that buffers more says so with conversation.item.truncate

    # --- the connection --------------------------------------------------------------------------------------

    def send_wire(self, event: dict[str, Any]) -> None:
        """A GA event for the client, in order with the audio deltas."""
        if self._closed:
            return
        if self._out.qsize() >= MAX_QUEUED:
            log.warning("realtime websocket: the client is not reading; closing")
            self._spawn(self.close("client_too_slow"))
            return
        self._out.put_nowait(event)

    async def run(self, session: Session) -> None:
        self.session = session
        self.protocol.attach(session, self._push_audio, self._wire_changed)
        self._wire_changed(self.protocol.wire)
        self._spawn(self._writer())
        session.start()
        self._spawn(self._audio_loop())
        reason = "hangup"
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    self.protocol.incoming(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.protocol.incoming(b"\xff")  # answered as "not valid JSON": events are text frames
                elif msg.type == WSMsgType.ERROR:
                    reason = "websocket_error"
                    break
        except ConnectionError:
            reason = "connection_lost"
        finally:
            await self.close(reason)

    async def _writer(self) -> None:
        try:
            while (event := await self._out.get()) is not None:
                await self.ws.send_str(json.dumps(event))
        except (ConnectionError, RuntimeError):
            self._spawn(self.close("connection_lost"))

    async def _audio_loop(self) -> None:
        assert self.session is not None
        playout = self.session.playout
        while not self._closed:
            await self._clock.tick()
            before = playout.speech_frames_out
            frame = playout.next_frame()
            if playout.speech_frames_out != before:
                self.protocol.audio_out(self._encode_frame(frame), encoder(self._encoder[0]))

    # --- audio formats ---------------------------------------------------------------------------------------

    def _wire_changed(self, wire: WireSettings) -> None:
        if self._decoder is None or self._decoder[0] != wire.input_format:
            self._decoder = (wire.input_format, Resampler(FORMAT_RATES[wire.input_format], ENGINE_RATE))
        if self._encoder[0] != wire.output_format:
            rate = FORMAT_RATES[wire.output_format]
            self._encoder = (wire.output_format, None if rate == OUT_RATE else Resampler(OUT_RATE, rate))

    def _push_audio(self, payload: bytes) -> None:
        assert self._decoder is not None and self.session is not None
        kind, resampler = self._decoder
        if kind == "audio/pcm":
            pcm = np.frombuffer(payload, "<i2")
        else:
            pcm = g711.decode(payload, "PCMU" if kind == "audio/pcmu" else "PCMA")
        duration_ms = pcm.size * 1000.0 / FORMAT_RATES[kind]
        # Dated on the audio's own timeline, never before it arrived: a burst is heard as if spoken.
        now = self.session.now_ms()
        self._next_at_ms = max(now, self._next_at_ms + duration_ms)
        self.session.push_audio(resampler.process(pcm), self._next_at_ms)

    def _encode_frame(self, frame: np.ndarray) -> np.ndarray:
        resampler = self._encoder[1]
        return frame if resampler is None else resampler.process(frame)

    # --- teardown --------------------------------------------------------------------------------------------

    async def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        if self.session is not None:
            await self.engine.close_session(self.session, reason)
        self._out.put_nowait(None)
        self._tasks.cancel_all()
        await self.ws.close()

    def _spawn(self, coro: Any) -> None:
        self._tasks.spawn(coro)


def add_routes(app: web.Application, engine: Engine) -> None:
    connections: set[RealtimeWebSocket] = set()

    async def connect(request: web.Request) -> web.StreamResponse:
        refusal = refused(engine)
        if refusal is not None:
            return refusal  # before the upgrade: a load balancer or client sees a plain 503
        wire = WireSettings(model=request.query.get("model", "parley"))
        ws = web.WebSocketResponse(heartbeat=20, max_msg_size=MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        link = RealtimeWebSocket(engine, ws, wire, wants_extensions(request))
        try:
            session = engine.open_session(link, engine.session_settings({}))
        except (CapacityError, ConfigError) as exc:
            # Capacity filled between the check above and the upgrade: a GA error, then the close.
            await ws.send_json({"type": "error", "event_id": "event_0", "error": {
                "type": "server_error", "code": "capacity", "message": str(exc), "param": None, "event_id": None}})
            await ws.close()
            return ws
        connections.add(link)
        started = time.monotonic()
        try:
            await link.run(session)
        finally:
            connections.discard(link)
            log.info("realtime websocket %s closed after %.1f s", session.id, time.monotonic() - started)
        return ws

    async def shutdown(app: web.Application) -> None:
        for link in list(connections):
            await link.close("server_shutdown")

    app.router.add_get(ROUTE, connect)
    app.on_shutdown.append(shutdown)
